// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {IERC20} from "./IERC20.sol";

/// @title Dharti settlement ledger
/// @notice Anchors a market's settlement batches and moves money by net
/// positions. A batch header holds two Merkle roots: one over the batch's
/// trade records, one over per-account net positions. It is accepted only
/// with EIP-712 approvals from at least `threshold` distinct members, in
/// strictly sequential batch numbers per market. Net positions are then
/// applied to escrow balances in chunks of at most `MAX_CHUNK_ACCOUNTS`
/// accounts, one transaction each, so no settlement transaction comes
/// near a block's gas limit however many households trade. A chunk applies
/// all or nothing; chunks apply in order, payers first, and no chunk may
/// pay out more than the batch's earlier chunks collected.
/// @dev Gas matters more than elegance here (docs/chain.md):
/// - the member list lives in the code of a small data contract (SSTORE2),
///   so checking ten approvers costs one EXTCODECOPY, not ten cold SLOADs;
/// - approvals are packed (member index, EIP-2098 compact signature) and
///   must name members in strictly increasing index order, which also
///   rules out duplicate signers;
/// - a batch costs one new storage slot: `keccak256(recordsRoot, netRoot)`.
contract SettlementLedger {
    // ---------------------------------------------------------------- types

    /// What members approve and the committer submits.
    struct BatchHeader {
        uint32 market;
        uint64 number;
        uint64 firstInterval;
        uint64 lastInterval;
        bytes32 recordsRoot;
        bytes32 netRoot;
    }

    /// One account's net position over a batch, in the market's money
    /// units (micro-units of its currency). Positive: the account receives.
    struct Position {
        address account;
        int256 amount;
    }

    /// One P2P trade as settled off chain; a leaf of a batch's records tree.
    struct TradeRecord {
        uint64 interval;
        bytes32 bidId;
        bytes32 askId;
        address buyer;
        address seller;
        uint64 energyWh;
        uint64 priceMicroPerKwh;
        uint64 valueMicro;
        uint64 gridFeeMicro;
        uint64 surplusMicro;
    }

    /// How a market settles: in native EWT or the ledger's ERC-20, with
    /// `scale` base units of that asset per money unit of the market.
    struct Market {
        bool registered;
        bool inToken;
        uint64 scale;
    }

    // ------------------------------------------------------------ constants

    bytes32 public constant BATCH_TYPEHASH = keccak256(
        "BatchHeader(uint32 market,uint64 number,uint64 firstInterval,uint64 lastInterval,bytes32 recordsRoot,bytes32 netRoot)"
    );
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant NAME_HASH = keccak256("DhartiSettlementLedger");
    bytes32 private constant VERSION_HASH = keccak256("1");

    /// Bytes per packed approval: uint16 member index, bytes32 r, bytes32 vs.
    uint256 public constant APPROVAL_BYTES = 66;
    /// The member list must fit one data contract (EIP-170: 24,576 bytes).
    uint256 public constant MAX_MEMBERS = 1000;
    /// Most accounts one settlement transaction applies. About 16,000 gas
    /// per account with escrow, 36,000 for one without: a chunk stays under
    /// a fifth of EWC's 6,000,000 block gas limit.
    uint256 public constant MAX_CHUNK_ACCOUNTS = 32;
    /// Upper half of the secp256k1 order: larger s values are malleable.
    uint256 private constant HALF_ORDER = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;
    /// Clears the y-parity bit of an EIP-2098 `vs`.
    uint256 private constant HALF_ORDER_MASK = 0x7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff;

    // ---------------------------------------------------------------- state

    address public admin;
    /// The one ERC-20 this ledger escrows besides native EWT (may be zero).
    IERC20 public immutable token;
    uint256 private immutable deployChainId;
    bytes32 private immutable deployDomain;

    /// Data contract holding the members' addresses, 20 bytes each, after
    /// one leading STOP byte. Packed with the count and the threshold so
    /// one SLOAD reads all three.
    address private membersData;
    uint16 public memberCount;
    uint16 public threshold;
    /// Index + 1 of each member in the list; zero for non-members.
    mapping(address => uint256) private memberSlot;
    address[] private memberList;

    /// Markets by their small on-chain index (1, 2, …): headers carry the
    /// index, which costs less calldata than the 32-byte market id.
    mapping(uint32 => Market) public markets;
    mapping(bytes32 => uint32) public marketIndex;
    uint32 public marketCount;
    /// keccak256(recordsRoot, netRoot) of batch n at `_key(market, n + 1)`;
    /// `_key(market, 0)` holds
    /// a non-zero sentinel once the market is registered. So one SLOAD of
    /// key n proves both "market registered" (n = 0) and "batch n - 1
    /// committed" (n > 0), and no separate market lookup is paid per batch.
    mapping(uint256 => bytes32) private roots;
    bytes32 private constant REGISTERED = bytes32(uint256(1));
    /// One bit per batch: its net positions have been applied.
    mapping(uint256 => uint256) private settledBits;
    /// Batches part-way through a settlement of several chunks, by
    /// `_key(market, number)`: the next chunk to apply (low 32 bits) and the
    /// money collected from payers and not yet paid out (the rest). Deleted
    /// when the last chunk applies.
    mapping(uint256 => uint256) private progress;

    /// `depositToken`'s re-entrancy lock: 1 and 2, never 0, so taking it
    /// costs no new storage slot.
    uint256 private depositLock = UNLOCKED;
    uint256 private constant UNLOCKED = 1;
    uint256 private constant LOCKED = 2;

    mapping(address => uint256) public nativeBalance;
    mapping(address => uint256) public tokenBalance;

    // --------------------------------------------------------------- events

    event AdminChanged(address indexed previous, address indexed next);
    event MemberAdded(address indexed member, uint256 index);
    event MemberRemoved(address indexed member);
    event ThresholdChanged(uint256 threshold);
    event MarketRegistered(bytes32 indexed marketId, uint32 indexed market, bool inToken, uint64 scale);
    /// The header (batch number, interval range, both roots) is in the
    /// transaction's input; the event only points at it, because every
    /// byte of it is paid for by every batch (`batchCount` gives the number).
    event BatchCommitted(uint32 indexed market);
    event BatchSettled(uint32 indexed market, uint64 indexed number, uint256 chunks);
    event NetPositionApplied(uint32 indexed market, uint64 indexed number, address indexed account, int256 amount);
    event Deposited(address indexed account, bool inToken, uint256 amount);
    event Withdrawn(address indexed account, bool inToken, uint256 amount);

    // --------------------------------------------------------------- errors

    error NotAdmin();
    error ZeroAddress();
    error AlreadyMember(address member);
    error NotMember(address member);
    error TooManyMembers();
    error BadThreshold(uint256 threshold, uint256 members);
    error UnknownMarket(uint32 market);
    error MarketExists(bytes32 marketId);
    error BadScale();
    error NoToken();
    error BadIntervalRange(uint64 firstInterval, uint64 lastInterval);
    error AlreadyCommitted(uint32 market, uint64 number);
    error OutOfOrder(uint32 market, uint64 number);
    error MalformedApprovals(uint256 length);
    error BelowQuorum(uint256 approvals, uint256 threshold);
    error ApproversNotAscending(uint256 position);
    error BadMemberIndex(uint256 index);
    error BadSignature(uint256 position);
    error NotCommitted(uint32 market, uint64 number);
    error AlreadySettled(uint32 market, uint64 number);
    error RootMismatch();
    error AccountsNotAscending(uint256 position);
    error PositionsDoNotSumToZero(int256 sum);
    error ChunkTooLarge(uint256 accounts);
    error ChunkOutOfOrder(uint32 market, uint64 number, uint32 index, uint32 expected);
    error ChunkUnderfunded(uint32 market, uint64 number, uint32 index, int256 shortfall);
    error AmountOutOfRange();
    error Reentered();
    error InsufficientBalance(address account, uint256 needed, uint256 available);
    error TransferFailed();

    // ---------------------------------------------------------- constructor

    constructor(address admin_, IERC20 token_) {
        if (admin_ == address(0)) revert ZeroAddress();
        admin = admin_;
        token = token_;
        deployChainId = block.chainid;
        deployDomain = _domain();
        emit AdminChanged(address(0), admin_);
    }

    modifier onlyAdmin() {
        if (msg.sender != admin) revert NotAdmin();
        _;
    }

    // ------------------------------------------------------------ admin API

    function setAdmin(address next) external onlyAdmin {
        if (next == address(0)) revert ZeroAddress();
        emit AdminChanged(admin, next);
        admin = next;
    }

    /// Adds members; the threshold is left as it is.
    function addMembers(address[] calldata accounts) external onlyAdmin {
        for (uint256 i = 0; i < accounts.length; i++) {
            address a = accounts[i];
            if (a == address(0)) revert ZeroAddress();
            if (memberSlot[a] != 0) revert AlreadyMember(a);
            memberList.push(a);
            memberSlot[a] = memberList.length;
            emit MemberAdded(a, memberList.length - 1);
        }
        if (memberList.length > MAX_MEMBERS) revert TooManyMembers();
        _writeMembers();
    }

    /// Removes a member. The last member takes its index, so approvals
    /// must be made against the list as it is when they are submitted.
    function removeMember(address account) external onlyAdmin {
        uint256 slot = memberSlot[account];
        if (slot == 0) revert NotMember(account);
        uint256 last = memberList.length - 1;
        if (slot - 1 != last) {
            address moved = memberList[last];
            memberList[slot - 1] = moved;
            memberSlot[moved] = slot;
        }
        memberList.pop();
        delete memberSlot[account];
        if (memberList.length < threshold) revert BadThreshold(threshold, memberList.length);
        emit MemberRemoved(account);
        _writeMembers();
    }

    function setThreshold(uint16 next) external onlyAdmin {
        if (next == 0 || next > memberList.length) revert BadThreshold(next, memberList.length);
        threshold = next;
        emit ThresholdChanged(next);
    }

    /// Registers a market (`marketId`: the market's 32-byte id off chain)
    /// and returns its index, which batch headers name.
    function registerMarket(bytes32 marketId, bool inToken, uint64 scale)
        external
        onlyAdmin
        returns (uint32 market)
    {
        if (marketIndex[marketId] != 0) revert MarketExists(marketId);
        if (scale == 0) revert BadScale();
        if (inToken && address(token) == address(0)) revert NoToken();
        market = ++marketCount;
        marketIndex[marketId] = market;
        markets[market] = Market({registered: true, inToken: inToken, scale: scale});
        roots[_key(market, 0)] = REGISTERED;
        emit MarketRegistered(marketId, market, inToken, scale);
    }

    // ------------------------------------------------------------- batches

    /// Anchors a batch. `approvals` is a packed list of (uint16 member
    /// index, bytes32 r, bytes32 vs) in strictly increasing member index,
    /// each an EIP-712 signature of `header` by that member.
    function commitBatch(BatchHeader calldata header, bytes calldata approvals) external {
        uint32 market = header.market;
        uint64 number = header.number;
        if (header.lastInterval < header.firstInterval) {
            revert BadIntervalRange(header.firstInterval, header.lastInterval);
        }
        if (roots[_key(market, uint256(number) + 1)] != bytes32(0)) revert AlreadyCommitted(market, number);
        if (roots[_key(market, number)] == bytes32(0)) {
            if (!markets[market].registered) revert UnknownMarket(market);
            revert OutOfOrder(market, number);
        }

        _checkApprovals(hashBatch(header), approvals);

        roots[_key(market, uint256(number) + 1)] = keccak256(abi.encodePacked(header.recordsRoot, header.netRoot));
        emit BatchCommitted(market);
    }

    /// Applies chunk `index` of `count` of a committed batch's net
    /// positions to the escrow balances, all or nothing. Anyone may call
    /// it: the quorum approved the roots.
    ///
    /// The net-positions root is a Merkle tree over chunk nodes
    /// `keccak256(uint32 index ‖ uint32 count ‖ root of the chunk's
    /// position leaves)`; `proof` is the chunk node's path to it. Chunks
    /// apply in index order. Within a chunk, payers (negative amounts) come
    /// before receivers and each group is in strictly increasing account
    /// order. A chunk must not pay out more than the batch's earlier chunks
    /// collected, and the whole batch must sum to exactly zero. A batch
    /// without positions (`netRoot` zero) is settled with `count` zero.
    function settleChunk(
        uint32 market,
        uint64 number,
        bytes32 recordsRoot,
        uint32 index,
        uint32 count,
        Position[] calldata positions,
        bytes32[] calldata proof
    ) external {
        uint256 key = _key(market, number);
        bytes32 stored = roots[key + 1];
        if (stored == bytes32(0)) revert NotCommitted(market, number);
        uint256 word = settledBits[_key(market, number >> 8)];
        uint256 bit = uint256(1) << (number & 0xff);
        if (word & bit != 0) revert AlreadySettled(market, number);
        if (positions.length > MAX_CHUNK_ACCOUNTS) revert ChunkTooLarge(positions.length);

        (bytes32 chunkRoot, int256 sum) = _chunkRoot(positions);
        bytes32 netRoot;
        if (count == 0) {
            if (index != 0 || positions.length != 0 || proof.length != 0) revert RootMismatch();
        } else {
            if (index >= count) revert RootMismatch();
            netRoot = _climb(keccak256(abi.encodePacked(index, count, chunkRoot)), proof);
        }
        if (keccak256(abi.encodePacked(recordsRoot, netRoot)) != stored) revert RootMismatch();

        // A batch of one chunk needs no progress: its settled bit is enough.
        uint256 collected;
        if (count > 1) {
            uint256 state = progress[key];
            if (uint32(state) != index) revert ChunkOutOfOrder(market, number, index, uint32(state));
            collected = state >> 32;
        }
        int256 left = int256(collected) - sum;
        if (index + 1 >= count) {
            if (left != 0) revert PositionsDoNotSumToZero(-left);
            settledBits[_key(market, number >> 8)] = word | bit;
            if (count > 1) delete progress[key];
        } else {
            if (left < 0) revert ChunkUnderfunded(market, number, index, -left);
            if (left > type(int128).max) revert AmountOutOfRange();
            progress[key] = (uint256(left) << 32) | (index + 1);
        }
        _apply(market, number, positions);
        if (index + 1 >= count) emit BatchSettled(market, number, count);
    }

    /// A batch part-way through settlement: the next chunk to apply and the
    /// money (market units) its applied chunks collected and have not paid
    /// out. Both zero for a batch not started or settled (`isSettled`).
    function settlementProgress(uint32 market, uint64 number)
        external
        view
        returns (uint32 nextChunk, uint256 collected)
    {
        uint256 state = progress[_key(market, number)];
        return (uint32(state), state >> 32);
    }

    /// keccak256(recordsRoot, netRoot) of a committed batch; zero if none.
    function batchRoot(uint32 market, uint64 number) external view returns (bytes32) {
        return roots[_key(market, uint256(number) + 1)];
    }

    /// How many batches of `market` are committed (the next number to
    /// commit). A view: an exponential then binary search over the roots.
    function batchCount(uint32 market) external view returns (uint64) {
        uint256 hi = 1;
        while (roots[_key(market, hi)] != bytes32(0)) hi <<= 1;
        uint256 lo = hi >> 1; // roots[lo] set (or lo == 0), roots[hi] empty
        while (lo + 1 < hi) {
            uint256 mid = (lo + hi) >> 1;
            if (roots[_key(market, mid)] != bytes32(0)) lo = mid;
            else hi = mid;
        }
        return uint64(lo);
    }

    function isSettled(uint32 market, uint64 number) external view returns (bool) {
        return settledBits[_key(market, number >> 8)] & (uint256(1) << (number & 0xff)) != 0;
    }

    /// True if `record` is in the records tree of the anchored batch.
    /// `netRoot` is the batch's other root (from its BatchCommitted event).
    function verifyTrade(
        uint32 market,
        uint64 number,
        TradeRecord calldata record,
        bytes32[] calldata proof,
        bytes32 netRoot
    ) external view returns (bool) {
        bytes32 stored = roots[_key(market, uint256(number) + 1)];
        if (stored == bytes32(0)) return false;
        bytes32 node = _climb(tradeLeaf(market, record), proof);
        return keccak256(abi.encodePacked(node, netRoot)) == stored;
    }

    // -------------------------------------------------------------- escrow

    function deposit() external payable {
        nativeBalance[msg.sender] += msg.value;
        emit Deposited(msg.sender, false, msg.value);
    }

    /// Credits what arrived. Not re-entrant: a token with transfer hooks
    /// could otherwise deposit again inside `transferFrom`, and both calls
    /// would credit the same arrival.
    function depositToken(uint256 amount) external {
        if (address(token) == address(0)) revert NoToken();
        if (depositLock != UNLOCKED) revert Reentered();
        depositLock = LOCKED;
        uint256 before = token.balanceOf(address(this));
        _callToken(abi.encodeCall(IERC20.transferFrom, (msg.sender, address(this), amount)));
        // Credit what arrived, not what was asked (fee-on-transfer tokens).
        uint256 received = token.balanceOf(address(this)) - before;
        tokenBalance[msg.sender] += received;
        depositLock = UNLOCKED;
        emit Deposited(msg.sender, true, received);
    }

    function withdraw(uint256 amount) external {
        uint256 available = nativeBalance[msg.sender];
        if (available < amount) revert InsufficientBalance(msg.sender, amount, available);
        nativeBalance[msg.sender] = available - amount;
        emit Withdrawn(msg.sender, false, amount);
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert TransferFailed();
    }

    function withdrawToken(uint256 amount) external {
        uint256 available = tokenBalance[msg.sender];
        if (available < amount) revert InsufficientBalance(msg.sender, amount, available);
        tokenBalance[msg.sender] = available - amount;
        emit Withdrawn(msg.sender, true, amount);
        _callToken(abi.encodeCall(IERC20.transfer, (msg.sender, amount)));
    }

    // --------------------------------------------------------------- views

    /// The EIP-712 domain: binds this chain and this contract. Recomputed
    /// if the chain id ever differs from deployment (a fork).
    function domainSeparator() public view returns (bytes32) {
        return block.chainid == deployChainId ? deployDomain : _domain();
    }

    function _domain() private view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    /// The EIP-712 digest members sign for `header`.
    function hashBatch(BatchHeader calldata header) public view returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(
                BATCH_TYPEHASH,
                header.market,
                header.number,
                header.firstInterval,
                header.lastInterval,
                header.recordsRoot,
                header.netRoot
            )
        );
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    function members() external view returns (address[] memory) {
        return memberList;
    }

    function isMember(address account) external view returns (bool) {
        return memberSlot[account] != 0;
    }

    function positionLeaf(address account, int256 amount) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(account, amount))));
    }

    function tradeLeaf(uint32 market, TradeRecord calldata r) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(market, r))));
    }

    // ------------------------------------------------------------ internal

    function _checkApprovals(bytes32 digest, bytes calldata approvals) private view {
        if (approvals.length % APPROVAL_BYTES != 0) revert MalformedApprovals(approvals.length);
        uint256 count = approvals.length / APPROVAL_BYTES;
        uint256 needed = threshold;
        if (count < needed || needed == 0) revert BelowQuorum(count, needed);

        address data = membersData;
        uint256 size = uint256(memberCount) * 20;
        // 0: fine; 1: index not ascending; 2: index past the list; 3: bad signature.
        uint256 failure;
        uint256 failedAt;
        // The whole loop in assembly: per approval it costs the calldata,
        // the ecrecover precompile and little else. The member list and the
        // precompile's input and output live past the free memory pointer,
        // unallocated. Few live variables, so none is moved to memory.
        assembly ("memory-safe") {
            let list := mload(0x40)
            extcodecopy(data, list, 1, size)
            let p := add(list, size)
            mstore(p, digest)
            let next := 0
            let end := add(approvals.offset, approvals.length)
            let out := add(p, 128)
            for { let base := approvals.offset } lt(base, end) { base := add(base, 66) } {
                let index := shr(240, calldataload(base))
                let offset := mul(index, 20)
                if or(lt(index, next), iszero(lt(offset, size))) {
                    // 1: not ascending (position); 2: past the list (index).
                    failure := add(1, iszero(lt(index, next)))
                    failedAt := index
                    if eq(failure, 1) { failedAt := div(sub(base, approvals.offset), 66) }
                    break
                }
                let vs := calldataload(add(base, 34))
                let s := and(vs, HALF_ORDER_MASK)
                mstore(add(p, 32), add(shr(255, vs), 27))
                mstore(add(p, 64), calldataload(add(base, 2)))
                mstore(add(p, 96), s)
                // The precompile writes nothing when recovery fails: the
                // cleared output then matches no member (none is zero).
                mstore(out, 0)
                pop(staticcall(gas(), 1, p, 128, out, 32))
                if iszero(and(iszero(gt(s, HALF_ORDER)), eq(mload(out), shr(96, mload(add(list, offset)))))) {
                    failure := 3
                    failedAt := div(sub(base, approvals.offset), 66)
                    break
                }
                next := add(index, 1)
            }
        }
        if (failure == 1) revert ApproversNotAscending(failedAt);
        if (failure == 2) revert BadMemberIndex(failedAt);
        if (failure == 3) revert BadSignature(failedAt);
    }

    /// Checks a chunk's order (payers first, then receivers, each by
    /// increasing account) and returns the root of its position leaves and
    /// the sum of its amounts.
    function _chunkRoot(Position[] calldata positions) private pure returns (bytes32, int256 sum) {
        uint256 n = positions.length;
        bytes32[] memory leaves = new bytes32[](n);
        uint256 previous = 0;
        for (uint256 i = 0; i < n; i++) {
            Position calldata p = positions[i];
            if (p.account == address(0)) revert ZeroAddress();
            uint256 order = uint256(uint160(p.account)) | (p.amount >= 0 ? uint256(1) << 160 : 0);
            if (order <= previous) revert AccountsNotAscending(i);
            previous = order;
            sum += p.amount;
            leaves[i] = positionLeaf(p.account, p.amount);
        }
        return (_root(leaves), sum);
    }

    /// The root reached from `node` by the sorted-pair path `proof`.
    function _climb(bytes32 node, bytes32[] calldata proof) private pure returns (bytes32) {
        assembly ("memory-safe") {
            for { let i := 0 } lt(i, proof.length) { i := add(i, 1) } {
                let sibling := calldataload(add(proof.offset, mul(i, 32)))
                switch lt(sibling, node)
                case 1 {
                    mstore(0x00, sibling)
                    mstore(0x20, node)
                }
                default {
                    mstore(0x00, node)
                    mstore(0x20, sibling)
                }
                node := keccak256(0x00, 0x40)
            }
        }
        return node;
    }

    function _apply(uint32 market, uint64 number, Position[] calldata positions) private {
        Market memory m = markets[market];
        mapping(address => uint256) storage balance = m.inToken ? tokenBalance : nativeBalance;
        for (uint256 i = 0; i < positions.length; i++) {
            address account = positions[i].account;
            int256 amount = positions[i].amount;
            if (amount >= 0) {
                balance[account] += uint256(amount) * m.scale;
            } else {
                uint256 debit = uint256(-amount) * m.scale;
                uint256 available = balance[account];
                if (available < debit) revert InsufficientBalance(account, debit, available);
                unchecked {
                    balance[account] = available - debit;
                }
            }
            emit NetPositionApplied(market, number, account, amount);
        }
    }

    function _writeMembers() private {
        uint256 n = memberList.length;
        bytes memory packed = new bytes(n * 20);
        for (uint256 i = 0; i < n; i++) {
            address a = memberList[i];
            assembly ("memory-safe") {
                mstore(add(add(packed, 32), mul(i, 20)), shl(96, a))
            }
        }
        // Init code that returns a leading STOP byte and the list as code:
        // PUSH2 size, DUP1, PUSH1 12, PUSH1 0, CODECOPY, PUSH1 0, RETURN.
        bytes memory init = abi.encodePacked(hex"61", uint16(n * 20 + 1), hex"80600c6000396000f3", hex"00", packed);
        address pointer;
        assembly ("memory-safe") {
            pointer := create(0, add(init, 32), mload(init))
        }
        if (pointer == address(0)) revert TooManyMembers();
        membersData = pointer;
        memberCount = uint16(n);
    }

    /// One storage key per (market, number): one hash, not two.
    function _key(uint32 market, uint256 number) private pure returns (uint256) {
        return (uint256(market) << 72) | number;
    }

    function _root(bytes32[] memory level) private pure returns (bytes32) {
        uint256 n = level.length;
        if (n == 0) return bytes32(0);
        while (n > 1) {
            uint256 half = n / 2;
            for (uint256 i = 0; i < half; i++) {
                level[i] = _hashPair(level[2 * i], level[2 * i + 1]);
            }
            if (n % 2 == 1) {
                level[half] = level[n - 1];
                n = half + 1;
            } else {
                n = half;
            }
        }
        return level[0];
    }

    /// Sorted-pair hashing, so proofs need no left/right flags.
    function _hashPair(bytes32 a, bytes32 b) private pure returns (bytes32 h) {
        (bytes32 lo, bytes32 hi) = a < b ? (a, b) : (b, a);
        assembly ("memory-safe") {
            mstore(0x00, lo)
            mstore(0x20, hi)
            h := keccak256(0x00, 0x40)
        }
    }

    function _callToken(bytes memory call) private {
        (bool ok, bytes memory ret) = address(token).call(call);
        if (!ok || (ret.length != 0 && !abi.decode(ret, (bool)))) revert TransferFailed();
    }
}
