//! EnergyCertificates: request → approve → issue, transfers, claims, and
//! every refusal, on the embedded EVM and on anvil.

mod common;

use alloy::primitives::{Address, B256, Bytes, U256};
use common::{chains, keys};
use dharti_contracts::bindings::EnergyCertificates;
use dharti_contracts::{Chain, ChainError, Contract, deploy_all};

const DEVICE: B256 = B256::repeat_byte(0xd0);
const START: u64 = 1_748_822_400; // 2025-06-02T00:00:00Z
const END: u64 = START + 900;

fn revert_name<T>(result: Result<T, ChainError>) -> String {
    match result {
        Err(e) => e.revert_name().unwrap_or("not a revert").to_owned(),
        Ok(_) => "succeeded".to_owned(),
    }
}

struct Fixture<'a> {
    certs: Contract<'a>,
    admin: Address,
    issuer: Address,
    producer: Address,
    buyer: Address,
    other: Address,
}

async fn fixture(chain: &Chain) -> Fixture<'_> {
    let k = keys();
    let admin = k[0].address();
    let deployment = deploy_all(chain, admin, None).await.expect("deploys");
    let certs = Contract::new(chain, deployment.certificates);
    let issuer = k[1].address();
    certs
        .send(
            admin,
            EnergyCertificates::setIssuerCall {
                issuer,
                enabled: true,
            },
        )
        .await
        .expect("admin names an issuer");
    Fixture {
        certs,
        admin,
        issuer,
        producer: k[2].address(),
        buyer: k[3].address(),
        other: k[4].address(),
    }
}

impl Fixture<'_> {
    async fn request(&self, start: u64, end: u64, volume: u64) -> Result<U256, ChainError> {
        self.certs
            .send(
                self.producer,
                EnergyCertificates::requestCertificateCall {
                    device: DEVICE,
                    generationStart: start,
                    generationEnd: end,
                    volumeWh: volume,
                },
            )
            .await?;
        self.certs
            .view(EnergyCertificates::requestCountCall {})
            .await
    }

    async fn issue(&self, start: u64, end: u64, volume: u64) -> U256 {
        let request = self.request(start, end, volume).await.expect("requests");
        self.certs
            .send(
                self.issuer,
                EnergyCertificates::approveRequestCall { requestId: request },
            )
            .await
            .expect("issuer approves");
        self.certs
            .view(EnergyCertificates::certificateCountCall {})
            .await
            .expect("view")
    }

    async fn balance(&self, who: Address, id: U256) -> U256 {
        self.certs
            .view(EnergyCertificates::balanceOfCall { account: who, id })
            .await
            .expect("view")
    }

    async fn transfer(
        &self,
        from: Address,
        to: Address,
        id: U256,
        value: u64,
    ) -> Result<u64, ChainError> {
        self.certs
            .send(
                from,
                EnergyCertificates::safeTransferFromCall {
                    from,
                    to,
                    id,
                    value: U256::from(value),
                    data: Bytes::new(),
                },
            )
            .await
            .map(|r| r.gas_used)
    }
}

#[tokio::test]
async fn a_certificate_is_requested_approved_issued_transferred_and_claimed() {
    for tc in chains().await {
        let f = fixture(&tc.chain).await;
        let id = f.issue(START, END, 2_500).await;
        assert_eq!(
            f.balance(f.producer, id).await,
            U256::from(2_500),
            "{}",
            tc.name
        );
        let cert = f
            .certs
            .view(EnergyCertificates::getCertificateCall { id })
            .await
            .expect("view");
        assert_eq!(
            (cert.device, cert.volumeWh, cert.issuer),
            (DEVICE, 2_500, f.issuer)
        );

        // The energy's buyer receives its share; a second id moves in a batch.
        f.transfer(f.producer, f.buyer, id, 1_000)
            .await
            .expect("transfers");
        let id2 = f.issue(END, END + 900, 300).await;
        f.certs
            .send(
                f.producer,
                EnergyCertificates::safeBatchTransferFromCall {
                    from: f.producer,
                    to: f.buyer,
                    ids: vec![id, id2],
                    values: vec![U256::from(500), U256::from(300)],
                    data: Bytes::new(),
                },
            )
            .await
            .expect("batch transfer");
        let balances = f
            .certs
            .view(EnergyCertificates::balanceOfBatchCall {
                accounts: vec![f.producer, f.buyer, f.buyer],
                ids: vec![id, id, id2],
            })
            .await
            .expect("view");
        assert_eq!(
            balances,
            vec![U256::from(1_000), U256::from(1_500), U256::from(300)]
        );

        // The buyer retires 1,200 Wh for a beneficiary.
        let receipt = f
            .certs
            .send(
                f.buyer,
                EnergyCertificates::claimCall {
                    id,
                    value: U256::from(1_200),
                    beneficiary: f.other,
                    purpose: "household consumption 2025-06".into(),
                },
            )
            .await
            .expect("claims");
        assert!(!receipt.logs.is_empty());
        let claimed = f
            .certs
            .view(EnergyCertificates::claimedBalanceOfCall {
                account: f.other,
                id,
            })
            .await
            .expect("view");
        assert_eq!(claimed, U256::from(1_200), "{}", tc.name);
        assert_eq!(f.balance(f.buyer, id).await, U256::from(300));

        // Claimed volume cannot move, and nobody claims more than it holds.
        assert_eq!(
            revert_name(f.transfer(f.buyer, f.other, id, 301).await),
            "InsufficientBalance"
        );
        assert_eq!(
            revert_name(f.transfer(f.other, f.buyer, id, 1).await),
            "InsufficientBalance"
        );
        let over = f
            .certs
            .send(
                f.buyer,
                EnergyCertificates::claimCall {
                    id,
                    value: U256::from(301),
                    beneficiary: f.buyer,
                    purpose: String::new(),
                },
            )
            .await;
        assert_eq!(revert_name(over), "InsufficientBalance", "{}", tc.name);
    }
}

#[tokio::test]
async fn issuing_and_moving_certificates_refuses_what_is_not_allowed() {
    for tc in chains().await {
        let f = fixture(&tc.chain).await;
        assert_eq!(revert_name(f.request(END, START, 10).await), "BadPeriod");
        assert_eq!(revert_name(f.request(START, END, 0).await), "ZeroVolume");
        let request = f.request(START, END, 100).await.expect("requests");
        // Only an issuer approves; only once.
        let by_producer = f
            .certs
            .send(
                f.producer,
                EnergyCertificates::approveRequestCall { requestId: request },
            )
            .await;
        assert_eq!(revert_name(by_producer), "NotIssuer", "{}", tc.name);
        f.certs
            .send(
                f.issuer,
                EnergyCertificates::approveRequestCall { requestId: request },
            )
            .await
            .expect("approves");
        let twice = f
            .certs
            .send(
                f.issuer,
                EnergyCertificates::approveRequestCall { requestId: request },
            )
            .await;
        assert_eq!(revert_name(twice), "NotPending");
        // The same energy is not certified twice.
        let again = f.request(START, END, 100).await.expect("requests");
        let duplicate = f
            .certs
            .send(
                f.issuer,
                EnergyCertificates::approveRequestCall { requestId: again },
            )
            .await;
        assert_eq!(revert_name(duplicate), "AlreadyIssued", "{}", tc.name);
        f.certs
            .send(
                f.issuer,
                EnergyCertificates::rejectRequestCall { requestId: again },
            )
            .await
            .expect("rejects");
        let status = f
            .certs
            .view(EnergyCertificates::getRequestCall { requestId: again })
            .await
            .expect("view");
        assert_eq!(status.status, 3, "rejected");

        // Only the admin names issuers.
        let not_admin = f
            .certs
            .send(
                f.producer,
                EnergyCertificates::setIssuerCall {
                    issuer: f.producer,
                    enabled: true,
                },
            )
            .await;
        assert_eq!(revert_name(not_admin), "NotAdmin");
        let _ = f.admin;

        // Moving someone else's certificates needs their approval.
        let id = U256::from(1);
        let stolen = f
            .certs
            .send(
                f.other,
                EnergyCertificates::safeTransferFromCall {
                    from: f.producer,
                    to: f.other,
                    id,
                    value: U256::from(10),
                    data: Bytes::new(),
                },
            )
            .await;
        assert_eq!(revert_name(stolen), "NotAuthorized", "{}", tc.name);
        f.certs
            .send(
                f.producer,
                EnergyCertificates::setApprovalForAllCall {
                    operator: f.other,
                    approved: true,
                },
            )
            .await
            .expect("approves an operator");
        f.certs
            .send(
                f.other,
                EnergyCertificates::safeTransferFromCall {
                    from: f.producer,
                    to: f.buyer,
                    id,
                    value: U256::from(10),
                    data: Bytes::new(),
                },
            )
            .await
            .expect("the operator moves them");
        assert_eq!(f.balance(f.buyer, id).await, U256::from(10));
        assert_eq!(
            revert_name(
                f.certs
                    .view(EnergyCertificates::getCertificateCall { id: U256::from(99) })
                    .await
            ),
            "UnknownCertificate"
        );
        let erc1155 = f
            .certs
            .view(EnergyCertificates::supportsInterfaceCall {
                interfaceId: [0xd9, 0xb6, 0x7a, 0x26].into(),
            })
            .await
            .expect("view");
        assert!(erc1155);
    }
}
