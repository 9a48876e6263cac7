// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {IERC20} from "./IERC20.sol";

/// @title Dharti settlement ledger
/// @notice Anchors a market's settlement batches and moves money by net
/// positions. A batch header holds two Merkle roots: one over the batch's
/// trade records, one over per-account net positions. It is accepted only
/// with EIP-712 approvals from at least `threshold` distinct members, in
/// strictly sequential batch numbers per market. Net positions are then
/// applied to escrow balances in one atomic call.
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
        bytes32 market;
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
        "BatchHeader(bytes32 market,uint64 number,uint64 firstInterval,uint64 lastInterval,bytes32 recordsRoot,bytes32 netRoot)"
    );
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant NAME_HASH = keccak256("DhartiSettlementLedger");
    bytes32 private constant VERSION_HASH = keccak256("1");

    /// Bytes per packed approval: uint16 member index, bytes32 r, bytes32 vs.
    uint256 public constant APPROVAL_BYTES = 66;
    /// The member list must fit one data contract (EIP-170: 24,576 bytes).
    uint256 public constant MAX_MEMBERS = 1000;
    /// Upper half of the secp256k1 order: larger s values are malleable.
    uint256 private constant HALF_ORDER = 0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    // ---------------------------------------------------------------- state

    address public admin;
    /// The one ERC-20 this ledger escrows besides native EWT (may be zero).
    IERC20 public immutable token;

    /// Data contract holding the members' addresses, 20 bytes each, after
    /// one leading STOP byte. Packed with the count and the threshold so
    /// one SLOAD reads all three.
    address private membersData;
    uint16 public memberCount;
    uint16 public threshold;
    /// Index + 1 of each member in the list; zero for non-members.
    mapping(address => uint256) private memberSlot;
    address[] private memberList;

    mapping(bytes32 => Market) public markets;
    /// keccak256(recordsRoot, netRoot) of each committed batch.
    mapping(bytes32 => mapping(uint64 => bytes32)) public batchRoot;
    /// One bit per batch: its net positions have been applied.
    mapping(bytes32 => mapping(uint256 => uint256)) private settledBits;

    mapping(address => uint256) public nativeBalance;
    mapping(address => uint256) public tokenBalance;

    // --------------------------------------------------------------- events

    event AdminChanged(address indexed previous, address indexed next);
    event MemberAdded(address indexed member, uint256 index);
    event MemberRemoved(address indexed member);
    event ThresholdChanged(uint256 threshold);
    event MarketRegistered(bytes32 indexed market, bool inToken, uint64 scale);
    event BatchCommitted(
        bytes32 indexed market,
        uint64 indexed number,
        uint64 firstInterval,
        uint64 lastInterval,
        bytes32 recordsRoot,
        bytes32 netRoot,
        address committer
    );
    event BatchSettled(bytes32 indexed market, uint64 indexed number, uint256 accounts);
    event NetPositionApplied(bytes32 indexed market, uint64 indexed number, address indexed account, int256 amount);
    event Deposited(address indexed account, bool inToken, uint256 amount);
    event Withdrawn(address indexed account, bool inToken, uint256 amount);

    // --------------------------------------------------------------- errors

    error NotAdmin();
    error ZeroAddress();
    error AlreadyMember(address member);
    error NotMember(address member);
    error TooManyMembers();
    error BadThreshold(uint256 threshold, uint256 members);
    error UnknownMarket(bytes32 market);
    error MarketExists(bytes32 market);
    error BadScale();
    error NoToken();
    error BadIntervalRange(uint64 firstInterval, uint64 lastInterval);
    error AlreadyCommitted(bytes32 market, uint64 number);
    error OutOfOrder(bytes32 market, uint64 number);
    error MalformedApprovals(uint256 length);
    error BelowQuorum(uint256 approvals, uint256 threshold);
    error ApproversNotAscending(uint256 position);
    error BadMemberIndex(uint256 index);
    error BadSignature(uint256 position);
    error NotCommitted(bytes32 market, uint64 number);
    error AlreadySettled(bytes32 market, uint64 number);
    error RootMismatch();
    error AccountsNotAscending(uint256 position);
    error PositionsDoNotSumToZero(int256 sum);
    error InsufficientBalance(address account, uint256 needed, uint256 available);
    error TransferFailed();

    // ---------------------------------------------------------- constructor

    constructor(address admin_, IERC20 token_) {
        if (admin_ == address(0)) revert ZeroAddress();
        admin = admin_;
        token = token_;
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

    function registerMarket(bytes32 market, bool inToken, uint64 scale) external onlyAdmin {
        if (markets[market].registered) revert MarketExists(market);
        if (scale == 0) revert BadScale();
        if (inToken && address(token) == address(0)) revert NoToken();
        markets[market] = Market({registered: true, inToken: inToken, scale: scale});
        emit MarketRegistered(market, inToken, scale);
    }

    // ------------------------------------------------------------- batches

    /// Anchors a batch. `approvals` is a packed list of (uint16 member
    /// index, bytes32 r, bytes32 vs) in strictly increasing member index,
    /// each an EIP-712 signature of `header` by that member.
    function commitBatch(BatchHeader calldata header, bytes calldata approvals) external {
        bytes32 market = header.market;
        uint64 number = header.number;
        if (!markets[market].registered) revert UnknownMarket(market);
        if (header.lastInterval < header.firstInterval) {
            revert BadIntervalRange(header.firstInterval, header.lastInterval);
        }
        if (batchRoot[market][number] != bytes32(0)) revert AlreadyCommitted(market, number);
        if (number != 0 && batchRoot[market][number - 1] == bytes32(0)) revert OutOfOrder(market, number);

        _checkApprovals(hashBatch(header), approvals);

        batchRoot[market][number] = keccak256(abi.encodePacked(header.recordsRoot, header.netRoot));
        emit BatchCommitted(
            market, number, header.firstInterval, header.lastInterval, header.recordsRoot, header.netRoot, msg.sender
        );
    }

    /// Applies a committed batch's net positions to the escrow balances,
    /// all or nothing. Anyone may call it: the quorum approved the roots.
    /// `positions` must be in strictly increasing account order and hash to
    /// the batch's net-positions root; the amounts must sum to zero.
    function settleBatch(bytes32 market, uint64 number, bytes32 recordsRoot, Position[] calldata positions)
        external
    {
        bytes32 stored = batchRoot[market][number];
        if (stored == bytes32(0)) revert NotCommitted(market, number);
        uint256 word = settledBits[market][number >> 8];
        uint256 bit = uint256(1) << (number & 0xff);
        if (word & bit != 0) revert AlreadySettled(market, number);

        if (keccak256(abi.encodePacked(recordsRoot, _netRoot(positions))) != stored) revert RootMismatch();
        settledBits[market][number >> 8] = word | bit;
        _apply(market, number, positions);
        emit BatchSettled(market, number, positions.length);
    }

    function isSettled(bytes32 market, uint64 number) external view returns (bool) {
        return settledBits[market][number >> 8] & (uint256(1) << (number & 0xff)) != 0;
    }

    /// True if `record` is in the records tree of the anchored batch.
    /// `netRoot` is the batch's other root (from its BatchCommitted event).
    function verifyTrade(
        bytes32 market,
        uint64 number,
        TradeRecord calldata record,
        bytes32[] calldata proof,
        bytes32 netRoot
    ) external view returns (bool) {
        bytes32 stored = batchRoot[market][number];
        if (stored == bytes32(0)) return false;
        bytes32 node = tradeLeaf(market, record);
        for (uint256 i = 0; i < proof.length; i++) {
            node = _hashPair(node, proof[i]);
        }
        return keccak256(abi.encodePacked(node, netRoot)) == stored;
    }

    // -------------------------------------------------------------- escrow

    function deposit() external payable {
        nativeBalance[msg.sender] += msg.value;
        emit Deposited(msg.sender, false, msg.value);
    }

    function depositToken(uint256 amount) external {
        if (address(token) == address(0)) revert NoToken();
        uint256 before = token.balanceOf(address(this));
        _callToken(abi.encodeCall(IERC20.transferFrom, (msg.sender, address(this), amount)));
        // Credit what arrived, not what was asked (fee-on-transfer tokens).
        uint256 received = token.balanceOf(address(this)) - before;
        tokenBalance[msg.sender] += received;
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

    function domainSeparator() public view returns (bytes32) {
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

    function tradeLeaf(bytes32 market, TradeRecord calldata r) public pure returns (bytes32) {
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
        bytes memory list = new bytes(size);
        assembly ("memory-safe") {
            extcodecopy(data, add(list, 32), 1, size)
        }

        uint256 last = type(uint256).max;
        for (uint256 i = 0; i < count; i++) {
            (uint256 index, address signer) = _recover(digest, approvals, i);
            if (last != type(uint256).max && index <= last) revert ApproversNotAscending(i);
            last = index;
            if (index >= size / 20) revert BadMemberIndex(index);
            address member;
            assembly ("memory-safe") {
                member := shr(96, mload(add(add(list, 32), mul(index, 20))))
            }
            if (signer == address(0) || signer != member) revert BadSignature(i);
        }
    }

    /// The member index and the signer of the `i`-th packed approval; a
    /// zero signer if the signature is invalid or malleable.
    function _recover(bytes32 digest, bytes calldata approvals, uint256 i)
        private
        pure
        returns (uint256 index, address signer)
    {
        bytes32 r;
        uint256 vs;
        assembly ("memory-safe") {
            let at := add(approvals.offset, mul(i, 66))
            index := shr(240, calldataload(at))
            r := calldataload(add(at, 2))
            vs := calldataload(add(at, 34))
        }
        uint256 s = vs & HALF_ORDER_MASK;
        if (s > HALF_ORDER) return (index, address(0));
        signer = ecrecover(digest, uint8((vs >> 255) + 27), r, bytes32(s));
    }

    uint256 private constant HALF_ORDER_MASK = (uint256(1) << 255) - 1;

    /// Checks the positions (ascending accounts, zero sum) and returns
    /// their Merkle root.
    function _netRoot(Position[] calldata positions) private pure returns (bytes32) {
        uint256 n = positions.length;
        bytes32[] memory leaves = new bytes32[](n);
        int256 sum = 0;
        address previous = address(0);
        for (uint256 i = 0; i < n; i++) {
            Position calldata p = positions[i];
            if (p.account <= previous) revert AccountsNotAscending(i);
            previous = p.account;
            sum += p.amount;
            leaves[i] = positionLeaf(p.account, p.amount);
        }
        if (sum != 0) revert PositionsDoNotSumToZero(sum);
        return _root(leaves);
    }

    function _apply(bytes32 market, uint64 number, Position[] calldata positions) private {
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
