//! SettlementLedger: every success and revert path, on the embedded EVM
//! and on anvil (when installed; always in CI).

mod common;

use std::collections::BTreeMap;

use alloy::primitives::{Address, B256, Bytes, I256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent;
use common::{addresses, chains, keys, stranger};
use dharti_contracts::batch::{self, Approval, pack_approvals, signing_hash};
use dharti_contracts::bindings::DemoEuro;
use dharti_contracts::bindings::SettlementLedger::{self, BatchHeader, TradeRecord};
use dharti_contracts::contract::settle_batch;
use dharti_contracts::merkle::root_from_proof;
use dharti_contracts::{Batch, Chain, ChainError, Contract, Deployment, deploy_all};

const MARKET_ID: B256 = B256::repeat_byte(0x4d);
/// The ledger numbers markets from 1 in registration order.
const MARKET: u32 = 1;
/// Native EWT: 10^12 wei per micro-unit, so 1 EWT stands for 1 euro.
const NATIVE_SCALE: u64 = 1_000_000_000_000;

struct Fixture<'a> {
    chain: &'a Chain,
    deployment: Deployment,
    keys: Vec<PrivateKeySigner>,
    ledger: Contract<'a>,
}

impl<'a> Fixture<'a> {
    /// Ten members, threshold seven, one native market; everyone deposits.
    async fn new(chain: &'a Chain) -> Fixture<'a> {
        let keys = keys();
        let admin = keys[0].address();
        let deployment = deploy_all(chain, admin, None).await.expect("deploys");
        let ledger = Contract::new(chain, deployment.ledger);
        ledger
            .send(
                admin,
                SettlementLedger::addMembersCall {
                    accounts: addresses(&keys),
                },
            )
            .await
            .expect("admin adds members");
        ledger
            .send(admin, SettlementLedger::setThresholdCall { next: 7 })
            .await
            .expect("admin sets the threshold");
        ledger
            .send(
                admin,
                SettlementLedger::registerMarketCall {
                    marketId: MARKET_ID,
                    inToken: false,
                    scale: NATIVE_SCALE,
                },
            )
            .await
            .expect("admin registers the market");
        Fixture {
            chain,
            deployment,
            keys,
            ledger,
        }
    }

    async fn deposit(&self, who: usize, micro: u64) {
        self.ledger
            .send_value(
                self.keys[who].address(),
                SettlementLedger::depositCall {},
                U256::from(micro) * U256::from(NATIVE_SCALE),
            )
            .await
            .expect("deposit");
    }

    async fn native(&self, who: Address) -> U256 {
        self.ledger
            .view(SettlementLedger::nativeBalanceCall(who))
            .await
            .expect("balance view")
    }

    fn approvals(&self, header: &BatchHeader, signers: &[usize]) -> Bytes {
        let digest = signing_hash(header, self.chain.chain_id(), self.deployment.ledger);
        let list: Vec<Approval> = signers
            .iter()
            .map(|&i| Approval::sign(&self.keys[i], u16::try_from(i).expect("small"), digest))
            .collect();
        pack_approvals(&list)
    }

    async fn commit(&self, header: &BatchHeader, approvals: Bytes) -> Result<u64, ChainError> {
        self.ledger
            .send(
                self.keys[1].address(),
                SettlementLedger::commitBatchCall {
                    header: header.clone(),
                    approvals,
                },
            )
            .await
            .map(|r| r.gas_used)
    }

    /// Sends every chunk of `batch`'s settlement in order; the gas of all.
    async fn settle(&self, batch: &Batch) -> Result<u64, ChainError> {
        let mut gas = 0;
        for index in 0..batch.chunk_count().max(1) {
            gas += self.settle_chunk(batch, index).await?;
        }
        Ok(gas)
    }

    async fn settle_chunk(&self, batch: &Batch, index: usize) -> Result<u64, ChainError> {
        self.send_settle(batch.settle_call(index).expect("a chunk of the batch"))
            .await
    }

    async fn send_settle(
        &self,
        call: SettlementLedger::settleChunkCall,
    ) -> Result<u64, ChainError> {
        self.ledger
            .send(self.keys[2].address(), call)
            .await
            .map(|r| r.gas_used)
    }

    async fn progress(&self, number: u64) -> (u32, U256) {
        let p = self
            .ledger
            .view(SettlementLedger::settlementProgressCall {
                market: MARKET,
                number,
            })
            .await
            .expect("view");
        (p.nextChunk, p.collected)
    }

    async fn is_settled(&self, number: u64) -> bool {
        self.ledger
            .view(SettlementLedger::isSettledCall {
                market: MARKET,
                number,
            })
            .await
            .expect("view")
    }
}

fn trade(
    interval: u64,
    buyer: Address,
    seller: Address,
    energy_wh: u64,
    price: u64,
    fee: u64,
) -> TradeRecord {
    TradeRecord {
        interval,
        bidId: B256::repeat_byte(u8::try_from(interval % 250).expect("small") + 1),
        askId: B256::repeat_byte(u8::try_from(energy_wh % 250).expect("small") + 2),
        buyer,
        seller,
        energyWh: energy_wh,
        priceMicroPerKwh: price,
        valueMicro: energy_wh * price / 1000,
        gridFeeMicro: energy_wh * fee / 1000,
        surplusMicro: 0,
    }
}

/// Trades between members 3..=6; the grid operator (key 9) gets the fees.
fn sample_batch(number: u64, keys: &[PrivateKeySigner]) -> Batch {
    let a = |i: usize| keys[i].address();
    let trades = vec![
        trade(10 + number * 4, a(3), a(4), 1200, 150_000, 20_000),
        trade(11 + number * 4, a(5), a(4), 800, 140_000, 20_000),
        trade(12 + number * 4, a(3), a(6), 450, 160_000, 20_000),
    ];
    let mut net: BTreeMap<Address, i64> = BTreeMap::new();
    for t in &trades {
        let pays = i64::try_from(t.valueMicro + t.gridFeeMicro).expect("small");
        *net.entry(t.buyer).or_default() -= pays;
        *net.entry(t.seller).or_default() += i64::try_from(t.valueMicro).expect("small");
        *net.entry(a(9)).or_default() += i64::try_from(t.gridFeeMicro).expect("small");
    }
    Batch::new(
        MARKET,
        number,
        number * 4 + 10,
        number * 4 + 13,
        trades,
        &net,
    )
    .expect("balanced")
}

fn revert_name(result: Result<u64, ChainError>) -> String {
    match result {
        Err(e) => e.revert_name().unwrap_or("not a revert").to_owned(),
        Ok(_) => "succeeded".to_owned(),
    }
}

#[tokio::test]
async fn a_quorum_approved_batch_is_anchored_settled_and_its_trades_prove() {
    for tc in chains().await {
        let f = Fixture::new(&tc.chain).await;
        for who in [3, 5] {
            f.deposit(who, 10_000_000).await;
        }
        let batch = sample_batch(0, &f.keys);

        // The contract's digest and leaves are the ones Rust computes.
        let on_chain_digest = f
            .ledger
            .view(SettlementLedger::hashBatchCall {
                header: batch.header.clone(),
            })
            .await
            .expect("view");
        assert_eq!(
            on_chain_digest,
            signing_hash(&batch.header, tc.chain.chain_id(), f.deployment.ledger),
            "{}",
            tc.name
        );
        let leaf = f
            .ledger
            .view(SettlementLedger::tradeLeafCall {
                market: MARKET,
                r: batch.trades[0].clone(),
            })
            .await
            .expect("view");
        assert_eq!(leaf, batch::trade_leaf(MARKET, &batch.trades[0]));

        let before: Vec<U256> = futures_balances(&f, &batch).await;
        f.commit(
            &batch.header,
            f.approvals(&batch.header, &[0, 2, 3, 4, 6, 8, 9]),
        )
        .await
        .expect("seven approvals commit");
        let stored = f
            .ledger
            .view(SettlementLedger::batchRootCall {
                market: MARKET,
                number: 0,
            })
            .await
            .expect("view");
        assert_ne!(stored, B256::ZERO);
        f.settle(&batch).await.expect("settles");
        let after: Vec<U256> = futures_balances(&f, &batch).await;
        for ((p, b), a) in batch.positions.iter().zip(&before).zip(&after) {
            let delta = I256::from_raw(*a) - I256::from_raw(*b);
            assert_eq!(
                delta,
                p.amount * I256::try_from(NATIVE_SCALE).expect("fits"),
                "{}: {}",
                tc.name,
                p.account
            );
        }
        let settled = f
            .ledger
            .view(SettlementLedger::isSettledCall {
                market: MARKET,
                number: 0,
            })
            .await
            .expect("view");
        assert!(settled);

        for (i, t) in batch.trades.iter().enumerate() {
            let proof = batch.trade_proof(i).expect("in range");
            assert_eq!(
                root_from_proof(batch::trade_leaf(MARKET, t), &proof),
                batch.header.recordsRoot
            );
            let ok = f
                .ledger
                .view(SettlementLedger::verifyTradeCall {
                    market: MARKET,
                    number: 0,
                    record: t.clone(),
                    proof: proof.clone(),
                    netRoot: batch.header.netRoot,
                })
                .await
                .expect("view");
            assert!(ok, "{}: trade {i} proves", tc.name);
            let mut forged = t.clone();
            forged.energyWh += 1;
            let forged_ok = f
                .ledger
                .view(SettlementLedger::verifyTradeCall {
                    market: MARKET,
                    number: 0,
                    record: forged,
                    proof,
                    netRoot: batch.header.netRoot,
                })
                .await
                .expect("view");
            assert!(!forged_ok, "{}: a changed trade does not prove", tc.name);
        }
    }
}

async fn futures_balances(f: &Fixture<'_>, batch: &Batch) -> Vec<U256> {
    let mut out = Vec::new();
    for p in &batch.positions {
        out.push(f.native(p.account).await);
    }
    out
}

#[tokio::test]
async fn commit_reverts_on_bad_duplicate_missing_or_replayed_approvals() {
    for tc in chains().await {
        let f = Fixture::new(&tc.chain).await;
        let batch = sample_batch(0, &f.keys);
        let h = &batch.header;
        let digest = signing_hash(h, tc.chain.chain_id(), f.deployment.ledger);
        let quorum = [0usize, 1, 2, 3, 4, 5, 6];

        // Below quorum: six of seven.
        assert_eq!(
            revert_name(f.commit(h, f.approvals(h, &quorum[..6])).await),
            "BelowQuorum"
        );

        // A stranger's signature in a member's slot.
        let mut list: Vec<Approval> = quorum[..6]
            .iter()
            .map(|&i| Approval::sign(&f.keys[i], u16::try_from(i).expect("small"), digest))
            .collect();
        list.push(Approval::sign(&stranger(), 6, digest));
        assert_eq!(
            revert_name(f.commit(h, pack_approvals(&list)).await),
            "BadSignature",
            "{}",
            tc.name
        );

        // A member's signature over another header.
        let mut other = h.clone();
        other.netRoot = B256::repeat_byte(9);
        let other_digest = signing_hash(&other, tc.chain.chain_id(), f.deployment.ledger);
        list.pop();
        list.push(Approval::sign(&f.keys[6], 6, other_digest));
        assert_eq!(
            revert_name(f.commit(h, pack_approvals(&list)).await),
            "BadSignature"
        );

        // Duplicate signer: the same member twice makes seven entries but
        // not seven members (packed by hand: pack_approvals would dedup).
        let one = Approval::sign(&f.keys[0], 0, digest);
        let mut packed = pack_approvals(&list[..6]).to_vec();
        packed.splice(0..0, pack_approvals(&[one]).iter().copied());
        assert_eq!(
            revert_name(f.commit(h, packed.into()).await),
            "ApproversNotAscending",
            "{}",
            tc.name
        );

        // A malleable twin (s' = n - s, parity flipped) of a valid signature.
        let valid = Approval::sign(&f.keys[6], 6, digest);
        let n = U256::from_str_radix(
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
            16,
        )
        .expect("the secp256k1 order");
        let vs = U256::from_be_slice(&valid.signature[32..]);
        let s: U256 = vs & ((U256::from(1) << 255usize) - U256::from(1));
        let parity: U256 = vs >> 255usize;
        let twin_vs: U256 = (n - s) | ((U256::from(1) - parity) << 255usize);
        let mut twin = valid;
        twin.signature[32..].copy_from_slice(&twin_vs.to_be_bytes::<32>());
        let mut malleable: Vec<Approval> = quorum[..6]
            .iter()
            .map(|&i| Approval::sign(&f.keys[i], u16::try_from(i).expect("small"), digest))
            .collect();
        malleable.push(twin);
        assert_eq!(
            revert_name(f.commit(h, pack_approvals(&malleable)).await),
            "BadSignature"
        );

        // Malformed packing and an index past the member list.
        let mut short = f.approvals(h, &quorum).to_vec();
        short.pop();
        assert_eq!(
            revert_name(f.commit(h, short.into()).await),
            "MalformedApprovals"
        );
        let mut past: Vec<Approval> = quorum[..6]
            .iter()
            .map(|&i| Approval::sign(&f.keys[i], u16::try_from(i).expect("small"), digest))
            .collect();
        past.push(Approval::sign(&f.keys[6], 40, digest));
        assert_eq!(
            revert_name(f.commit(h, pack_approvals(&past)).await),
            "BadMemberIndex"
        );

        // Replay on another chain id: signed for EWC (246), submitted here.
        let ewc_digest = signing_hash(h, 246, f.deployment.ledger);
        let replayed: Vec<Approval> = quorum
            .iter()
            .map(|&i| Approval::sign(&f.keys[i], u16::try_from(i).expect("small"), ewc_digest))
            .collect();
        assert_eq!(
            revert_name(f.commit(h, pack_approvals(&replayed)).await),
            "BadSignature"
        );

        // Replay on another contract: a second ledger with the same members
        // refuses approvals made for the first, and vice versa.
        let second = Fixture::new(&tc.chain).await;
        assert_eq!(
            revert_name(second.commit(h, f.approvals(h, &quorum)).await),
            "BadSignature"
        );
        second
            .commit(h, second.approvals(h, &quorum))
            .await
            .expect("the second ledger's own approvals commit");

        // Unknown market and an empty interval range.
        let mut unknown = h.clone();
        unknown.market = 2;
        assert_eq!(
            revert_name(f.commit(&unknown, f.approvals(&unknown, &quorum)).await),
            "UnknownMarket"
        );
        let mut backwards = h.clone();
        backwards.lastInterval = backwards.firstInterval - 1;
        assert_eq!(
            revert_name(f.commit(&backwards, f.approvals(&backwards, &quorum)).await),
            "BadIntervalRange"
        );

        // Nothing above was anchored.
        let stored = f
            .ledger
            .view(SettlementLedger::batchRootCall {
                market: MARKET,
                number: 0,
            })
            .await
            .expect("view");
        assert_eq!(stored, B256::ZERO, "{}", tc.name);
    }
}

#[tokio::test]
async fn batches_are_strictly_sequential_and_never_committed_twice() {
    for tc in chains().await {
        let f = Fixture::new(&tc.chain).await;
        let quorum = [1usize, 2, 3, 4, 5, 7, 9];
        let b0 = sample_batch(0, &f.keys);
        let b1 = sample_batch(1, &f.keys);
        let b2 = sample_batch(2, &f.keys);
        assert_eq!(
            revert_name(f.commit(&b1.header, f.approvals(&b1.header, &quorum)).await),
            "OutOfOrder"
        );
        f.commit(&b0.header, f.approvals(&b0.header, &quorum))
            .await
            .expect("batch 0");
        assert_eq!(
            revert_name(f.commit(&b0.header, f.approvals(&b0.header, &quorum)).await),
            "AlreadyCommitted",
            "{}",
            tc.name
        );
        assert_eq!(
            revert_name(f.commit(&b2.header, f.approvals(&b2.header, &quorum)).await),
            "OutOfOrder"
        );
        f.commit(&b1.header, f.approvals(&b1.header, &quorum))
            .await
            .expect("batch 1");
        let count = f
            .ledger
            .view(SettlementLedger::batchCountCall { market: MARKET })
            .await
            .expect("view");
        assert_eq!(count, 2, "{}", tc.name);
        f.commit(&b2.header, f.approvals(&b2.header, &quorum))
            .await
            .expect("batch 2");
        let count = f
            .ledger
            .view(SettlementLedger::batchCountCall { market: MARKET })
            .await
            .expect("view");
        assert_eq!(count, 3, "{}", tc.name);
    }
}

#[tokio::test]
async fn settlement_is_all_or_nothing_and_happens_once() {
    for tc in chains().await {
        let f = Fixture::new(&tc.chain).await;
        let batch = sample_batch(0, &f.keys);
        assert_eq!(revert_name(f.settle(&batch).await), "NotCommitted");
        f.commit(
            &batch.header,
            f.approvals(&batch.header, &[0, 1, 2, 3, 4, 5, 6]),
        )
        .await
        .expect("commits");

        // Member 5 owes but has deposited too little: nothing moves.
        f.deposit(3, 10_000_000).await;
        f.deposit(5, 1).await;
        let seller = f.keys[4].address();
        assert_eq!(
            revert_name(f.settle(&batch).await),
            "InsufficientBalance",
            "{}",
            tc.name
        );
        assert_eq!(
            f.native(seller).await,
            U256::ZERO,
            "{}: no partial settlement",
            tc.name
        );

        // Positions that do not match the anchored root or are out of
        // order are refused.
        let mut tampered = batch.clone();
        tampered.positions[0].amount -= I256::ONE;
        tampered.positions[1].amount += I256::ONE;
        assert_eq!(revert_name(f.settle(&tampered).await), "RootMismatch");
        let mut unsorted = batch.clone();
        unsorted.positions.swap(0, 1);
        assert_eq!(
            revert_name(f.settle(&unsorted).await),
            "AccountsNotAscending"
        );
        f.deposit(5, 10_000_000).await;
        f.settle(&batch).await.expect("settles once funded");
        assert_eq!(
            revert_name(f.settle(&batch).await),
            "AlreadySettled",
            "{}",
            tc.name
        );
    }
}

/// Ten payers (the dev keys) and `receivers` fresh accounts; payer `i`
/// pays `100 + i` to each receiver.
fn wide_net(keys: &[PrivateKeySigner], receivers: usize) -> BTreeMap<Address, i64> {
    let mut net = BTreeMap::new();
    for r in 0..receivers {
        let account = Address::left_padding_from(&(0x1000_u64 + r as u64).to_be_bytes());
        for (i, k) in keys.iter().enumerate() {
            let amount = 100 + i as i64;
            *net.entry(k.address()).or_default() -= amount;
            *net.entry(account).or_default() += amount;
        }
    }
    net
}

fn total_of(positions: &[SettlementLedger::Position]) -> I256 {
    positions.iter().fold(I256::ZERO, |sum, p| sum + p.amount)
}

#[tokio::test]
async fn a_wide_batch_settles_chunk_by_chunk_in_order_and_never_pays_out_before_collecting() {
    for tc in chains().await {
        let f = Fixture::new(&tc.chain).await;
        // Payer 9 has no escrow yet.
        for who in 0..9 {
            f.deposit(who, 10_000_000).await;
        }
        // 10 payers and 60 receivers: chunks of 32, 32 and 6 accounts.
        let net = wide_net(&f.keys, 60);
        let batch = Batch::new(MARKET, 0, 0, 3, vec![], &net).expect("balanced");
        assert_eq!(batch.chunk_count(), 3);
        let all = f.approvals(&batch.header, &[0, 1, 2, 3, 4, 5, 6]);
        f.commit(&batch.header, all).await.expect("commits");
        // With a payer short, the daemon's settle does not start a batch
        // of several chunks (its first chunk would collect the others'
        // money, to wait for that payer).
        let short = settle_batch(f.chain, f.deployment.ledger, f.keys[7].address(), &batch).await;
        assert!(
            matches!(short, Err(ChainError::EscrowShort(_))),
            "{}: {short:?}",
            tc.name
        );
        assert_eq!(f.progress(0).await, (0, U256::ZERO), "{}", tc.name);
        f.deposit(9, 10_000_000).await;
        let before = futures_balances(&f, &batch).await;

        assert_eq!(
            revert_name(f.settle_chunk(&batch, 1).await),
            "ChunkOutOfOrder",
            "{}",
            tc.name
        );
        let first = f.settle_chunk(&batch, 0).await.expect("chunk 0");
        // Chunk 0 holds every payer: it collected their whole debit.
        let debits = -total_of(&batch.positions[..10]);
        let paid_in_chunk0 = total_of(&batch.positions[10..32]);
        assert_eq!(
            f.progress(0).await,
            (1, (debits - paid_in_chunk0).into_raw()),
            "{}",
            tc.name
        );
        assert!(!f.is_settled(0).await);
        assert_eq!(
            revert_name(f.settle_chunk(&batch, 0).await),
            "ChunkOutOfOrder",
            "{}: a chunk applies once",
            tc.name
        );
        // Part of a chunk, with the chunk's proof, is not the chunk.
        let mut half = batch.clone();
        half.positions.truncate(48);
        assert_eq!(
            revert_name(f.settle_chunk(&half, 1).await),
            "RootMismatch",
            "{}",
            tc.name
        );
        // The daemon's settle resumes where the chain is: chunks 1 and 2.
        let rest = settle_batch(f.chain, f.deployment.ledger, f.keys[7].address(), &batch)
            .await
            .expect("the rest settles");
        assert_eq!(rest.len(), 2, "{}", tc.name);
        let [second, third] = [rest[0].gas_used, rest[1].gas_used];
        assert!(f.is_settled(0).await);
        assert_eq!(f.progress(0).await, (0, U256::ZERO), "{}", tc.name);
        assert_eq!(
            revert_name(f.settle_chunk(&batch, 2).await),
            "AlreadySettled"
        );
        let again = settle_batch(f.chain, f.deployment.ledger, f.keys[7].address(), &batch)
            .await
            .expect("a settled batch is done");
        assert!(again.is_empty(), "{}", tc.name);
        let after = futures_balances(&f, &batch).await;
        for ((p, b), a) in batch.positions.iter().zip(&before).zip(&after) {
            let delta = I256::from_raw(*a) - I256::from_raw(*b);
            assert_eq!(
                delta,
                p.amount * I256::try_from(NATIVE_SCALE).expect("fits")
            );
        }
        // Every chunk stays far below EWC's 6,000,000 block gas limit.
        for gas in [first, second, third] {
            assert!(gas < 1_200_000, "{}: chunk gas {gas}", tc.name);
        }

        // A batch whose first chunk pays out before anything is collected
        // (receivers first) cannot settle, even though it is approved.
        let receivers_first: Vec<_> = batch.positions[10..]
            .iter()
            .chain(&batch.positions[..10])
            .cloned()
            .collect();
        let bad = Batch::with_positions(MARKET, 1, 4, 7, vec![], receivers_first).expect("a range");
        let all = f.approvals(&bad.header, &[0, 1, 2, 3, 4, 5, 6]);
        f.commit(&bad.header, all).await.expect("commits");
        assert_eq!(
            revert_name(f.settle_chunk(&bad, 0).await),
            "ChunkUnderfunded",
            "{}",
            tc.name
        );

        // Approved positions that do not sum to zero settle nothing.
        let mut unbalanced = batch.positions[..2].to_vec();
        unbalanced.push(batch.positions[40].clone());
        let bad = Batch::with_positions(MARKET, 2, 8, 11, vec![], unbalanced).expect("a range");
        let all = f.approvals(&bad.header, &[0, 1, 2, 3, 4, 5, 6]);
        f.commit(&bad.header, all).await.expect("commits");
        assert_eq!(
            revert_name(f.settle(&bad).await),
            "PositionsDoNotSumToZero",
            "{}",
            tc.name
        );

        // More than a chunk's worth of accounts in one call is refused.
        let mut call = batch.settle_call(0).expect("chunk 0");
        call.number = 2;
        call.positions = batch.positions[..33].to_vec();
        assert_eq!(revert_name(f.send_settle(call).await), "ChunkTooLarge");
        // Money paid to the zero address would be lost: refused.
        let mut call = batch.settle_call(0).expect("chunk 0");
        call.number = 2;
        call.positions[12].account = Address::ZERO;
        assert_eq!(revert_name(f.send_settle(call).await), "ZeroAddress");

        // A batch without positions is settled by one call with no chunk.
        let empty = Batch::new(MARKET, 3, 12, 15, vec![], &BTreeMap::new()).expect("empty");
        assert_eq!(empty.chunk_count(), 0);
        assert_eq!(empty.header.netRoot, B256::ZERO);
        let all = f.approvals(&empty.header, &[0, 1, 2, 3, 4, 5, 6]);
        f.commit(&empty.header, all).await.expect("commits");
        f.settle(&empty).await.expect("settles");
        assert!(f.is_settled(3).await, "{}", tc.name);
    }
}

alloy::sol!(
    #[sol(all_derives)]
    ReentrantTestToken,
    "artifacts/ReentrantTestToken.json"
);

#[tokio::test]
async fn a_token_that_re_enters_deposit_cannot_be_credited_twice() {
    for tc in chains().await {
        let keys = keys();
        let (admin, user) = (keys[0].address(), keys[4].address());
        let (token, _) = dharti_contracts::contract::deploy(
            &tc.chain,
            admin,
            &ReentrantTestToken::BYTECODE,
            Vec::new(),
        )
        .await
        .expect("token deploys");
        let (ledger, _) = dharti_contracts::contract::deploy(
            &tc.chain,
            admin,
            &SettlementLedger::BYTECODE,
            alloy::sol_types::SolConstructor::abi_encode(&SettlementLedger::constructorCall {
                admin_: admin,
                token_: token,
            }),
        )
        .await
        .expect("ledger deploys");
        let (token_c, ledger_c) = (
            Contract::new(&tc.chain, token),
            Contract::new(&tc.chain, ledger),
        );
        let amount = U256::from(1_000);
        token_c
            .send(user, ReentrantTestToken::mintCall { to: user, amount })
            .await
            .expect("mint");
        token_c
            .send(
                user,
                ReentrantTestToken::approveCall {
                    spender: ledger,
                    amount,
                },
            )
            .await
            .expect("approve");
        token_c
            .send(
                user,
                ReentrantTestToken::armCall {
                    ledger_: ledger,
                    amount,
                },
            )
            .await
            .expect("arm");
        // Re-entered, the deposit would have credited the inner arrival
        // twice (3 × amount for 2 × amount received): it is refused whole.
        let reentered = ledger_c
            .send(user, SettlementLedger::depositTokenCall { amount })
            .await
            .map(|r| r.gas_used);
        assert_eq!(revert_name(reentered), "TransferFailed", "{}", tc.name);
        for who in [user, token] {
            let credited = ledger_c
                .view(SettlementLedger::tokenBalanceCall(who))
                .await
                .expect("view");
            assert_eq!(credited, U256::ZERO, "{}", tc.name);
        }
        // Disarmed, the same token deposits normally: the lock was
        // released, and exactly what arrived is credited.
        token_c
            .send(user, ReentrantTestToken::disarmCall {})
            .await
            .expect("disarm");
        ledger_c
            .send(user, SettlementLedger::depositTokenCall { amount })
            .await
            .expect("a plain deposit");
        let credited = ledger_c
            .view(SettlementLedger::tokenBalanceCall(user))
            .await
            .expect("view");
        assert_eq!(credited, amount, "{}", tc.name);
    }
}

#[tokio::test]
async fn escrow_never_pays_out_more_than_a_balance_in_either_asset() {
    for tc in chains().await {
        let f = Fixture::new(&tc.chain).await;
        let k = f.keys[3].address();
        f.deposit(3, 5_000_000).await;
        let overdraw = f
            .ledger
            .send(
                k,
                SettlementLedger::withdrawCall {
                    amount: U256::from(5_000_001) * U256::from(NATIVE_SCALE),
                },
            )
            .await
            .map(|r| r.gas_used);
        assert_eq!(revert_name(overdraw), "InsufficientBalance", "{}", tc.name);
        let before = tc.chain.balance(k).await.expect("balance");
        let receipt = f
            .ledger
            .send(
                k,
                SettlementLedger::withdrawCall {
                    amount: U256::from(5_000_000) * U256::from(NATIVE_SCALE),
                },
            )
            .await
            .expect("withdraws what it has");
        let after = tc.chain.balance(k).await.expect("balance");
        // 5 EWT arrived, less gas (priced at zero on the embedded chain).
        assert!(
            after > before + U256::from(4_900_000) * U256::from(NATIVE_SCALE),
            "{}: the withdrawal arrived",
            tc.name
        );
        assert!(
            receipt
                .logs
                .iter()
                .any(|l| SettlementLedger::Withdrawn::decode_log(l).is_ok())
        );
        assert_eq!(f.native(k).await, U256::ZERO);

        // The ERC-20: deposit needs an allowance, withdrawal stops at the balance.
        let admin = f.keys[0].address();
        let token = Contract::new(&tc.chain, f.deployment.token);
        token
            .send(
                admin,
                DemoEuro::mintCall {
                    to: k,
                    amount: U256::from(1_000),
                },
            )
            .await
            .expect("mints");
        let no_allowance = f
            .ledger
            .send(
                k,
                SettlementLedger::depositTokenCall {
                    amount: U256::from(500),
                },
            )
            .await
            .map(|r| r.gas_used);
        assert_eq!(revert_name(no_allowance), "TransferFailed", "{}", tc.name);
        token
            .send(
                k,
                DemoEuro::approveCall {
                    spender: f.deployment.ledger,
                    amount: U256::from(500),
                },
            )
            .await
            .expect("approves");
        f.ledger
            .send(
                k,
                SettlementLedger::depositTokenCall {
                    amount: U256::from(500),
                },
            )
            .await
            .expect("deposits tokens");
        let over = f
            .ledger
            .send(
                k,
                SettlementLedger::withdrawTokenCall {
                    amount: U256::from(501),
                },
            )
            .await
            .map(|r| r.gas_used);
        assert_eq!(revert_name(over), "InsufficientBalance");
        f.ledger
            .send(
                k,
                SettlementLedger::withdrawTokenCall {
                    amount: U256::from(200),
                },
            )
            .await
            .expect("withdraws tokens");
        let held = token.view(DemoEuro::balanceOfCall(k)).await.expect("view");
        assert_eq!(held, U256::from(700), "{}", tc.name);
    }
}

#[tokio::test]
async fn only_the_admin_manages_members_markets_and_the_threshold() {
    for tc in chains().await {
        let f = Fixture::new(&tc.chain).await;
        let outsider = f.keys[5].address();
        let not_admin = f
            .ledger
            .send(
                outsider,
                SettlementLedger::addMembersCall {
                    accounts: vec![stranger().address()],
                },
            )
            .await
            .map(|r| r.gas_used);
        assert_eq!(revert_name(not_admin), "NotAdmin", "{}", tc.name);
        let admin = f.keys[0].address();
        let too_high = f
            .ledger
            .send(admin, SettlementLedger::setThresholdCall { next: 11 })
            .await
            .map(|r| r.gas_used);
        assert_eq!(revert_name(too_high), "BadThreshold");
        let again = f
            .ledger
            .send(
                admin,
                SettlementLedger::addMembersCall {
                    accounts: vec![f.keys[1].address()],
                },
            )
            .await
            .map(|r| r.gas_used);
        assert_eq!(revert_name(again), "AlreadyMember");

        // Removing a member moves the last one into its index; approvals
        // follow the list as it is when the batch is committed.
        f.ledger
            .send(
                admin,
                SettlementLedger::removeMemberCall {
                    account: f.keys[2].address(),
                },
            )
            .await
            .expect("removes");
        let members = f
            .ledger
            .view(SettlementLedger::membersCall {})
            .await
            .expect("view");
        assert_eq!(members.len(), 9);
        assert_eq!(members[2], f.keys[9].address());
        let removed_is_member = f
            .ledger
            .view(SettlementLedger::isMemberCall {
                account: f.keys[2].address(),
            })
            .await
            .expect("view");
        assert!(!removed_is_member);

        let batch = sample_batch(0, &f.keys);
        let digest = signing_hash(&batch.header, tc.chain.chain_id(), f.deployment.ledger);
        let by_index = |index: usize| {
            let key = f
                .keys
                .iter()
                .find(|k| k.address() == members[index])
                .expect("a member");
            Approval::sign(key, u16::try_from(index).expect("small"), digest)
        };
        let current: Vec<Approval> = (0..7).map(by_index).collect();
        // The removed member at its old index no longer counts.
        let mut stale = current[..6].to_vec();
        stale.push(Approval::sign(&f.keys[2], 8, digest));
        assert_eq!(
            revert_name(f.commit(&batch.header, pack_approvals(&stale)).await),
            "BadSignature"
        );
        f.commit(&batch.header, pack_approvals(&current))
            .await
            .expect("the current members commit");

        // Removing below the threshold is refused.
        for i in [1usize, 3] {
            f.ledger
                .send(
                    admin,
                    SettlementLedger::removeMemberCall {
                        account: f.keys[i].address(),
                    },
                )
                .await
                .expect("removes");
        }
        let below = f
            .ledger
            .send(
                admin,
                SettlementLedger::removeMemberCall {
                    account: f.keys[4].address(),
                },
            )
            .await
            .map(|r| r.gas_used);
        assert_eq!(revert_name(below), "BadThreshold", "{}", tc.name);
    }
}

#[tokio::test]
async fn a_positions_leaf_matches_the_contract_and_unbalanced_batches_are_refused_off_chain() {
    for tc in chains().await {
        let f = Fixture::new(&tc.chain).await;
        let account = f.keys[4].address();
        let amount = I256::try_from(-1234i64).expect("fits");
        let on_chain = f
            .ledger
            .view(SettlementLedger::positionLeafCall { account, amount })
            .await
            .expect("view");
        assert_eq!(
            on_chain,
            batch::position_leaf(account, amount),
            "{}",
            tc.name
        );
        let chunk = f
            .ledger
            .view(SettlementLedger::MAX_CHUNK_ACCOUNTSCall {})
            .await
            .expect("view");
        assert_eq!(chunk, U256::from(batch::MAX_CHUNK_ACCOUNTS), "{}", tc.name);
    }
    let mut net = BTreeMap::new();
    net.insert(Address::repeat_byte(1), 5i64);
    net.insert(Address::repeat_byte(2), -4i64);
    assert!(Batch::new(MARKET, 0, 0, 0, vec![], &net).is_err());
}
