// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

interface ILedgerDeposit {
    function depositToken(uint256 amount) external;
}

/// @title Test fixture, never deployed outside the tests
/// @notice An ERC-20 whose `transferFrom`, once armed, calls back into the
/// ledger's `depositToken` (as an ERC-777 hook could), paying from its own
/// balance. The ledger tests use it to show that `depositToken` cannot be
/// re-entered to credit one arrival twice.
contract ReentrantTestToken {
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;
    address private ledger;
    bool private armed;

    function mint(address to, uint256 amount) external {
        balanceOf[to] += amount;
    }

    /// The next `transferFrom` re-enters `ledger` with `amount` of the
    /// token's own balance.
    function arm(address ledger_, uint256 amount) external {
        ledger = ledger_;
        armed = true;
        balanceOf[address(this)] += amount;
        allowance[address(this)][ledger_] = amount;
    }

    function disarm() external {
        armed = false;
    }

    function approve(address spender, uint256 amount) external returns (bool) {
        allowance[msg.sender][spender] = amount;
        return true;
    }

    function transfer(address to, uint256 amount) external returns (bool) {
        _move(msg.sender, to, amount);
        return true;
    }

    function transferFrom(address from, address to, uint256 amount) external returns (bool) {
        allowance[from][msg.sender] -= amount;
        _move(from, to, amount);
        if (armed) {
            armed = false;
            ILedgerDeposit(ledger).depositToken(amount);
        }
        return true;
    }

    function _move(address from, address to, uint256 amount) private {
        balanceOf[from] -= amount;
        balanceOf[to] += amount;
    }
}
