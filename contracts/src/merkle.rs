//! The Merkle trees of a settlement batch, built exactly as
//! `SettlementLedger` rebuilds and checks them on chain.
//!
//! - Leaves are double-hashed (`keccak256(keccak256(abi.encode(..)))`), so a
//!   leaf can never be mistaken for an inner node of 64 bytes.
//! - Inner nodes hash the sorted pair (`keccak256(min ‖ max)`), so a proof
//!   is a plain list of siblings without left/right flags.
//! - Levels pair neighbours `(0,1), (2,3), …`; an odd last node is carried
//!   up unchanged. The root of no leaves is zero.

use alloy::primitives::{B256, keccak256};

/// Sorted-pair hash of two nodes.
pub fn hash_pair(a: B256, b: B256) -> B256 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(lo.as_slice());
    buf[32..].copy_from_slice(hi.as_slice());
    keccak256(buf)
}

/// A leaf from an ABI-encoded record.
pub fn leaf(abi_encoded: &[u8]) -> B256 {
    keccak256(keccak256(abi_encoded))
}

/// A whole tree, kept level by level so any leaf's proof can be read off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleTree {
    levels: Vec<Vec<B256>>,
}

impl MerkleTree {
    pub fn new(leaves: Vec<B256>) -> Self {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|level| level.len() > 1) {
            let below = levels.last().expect("a level exists");
            let next = below
                .chunks(2)
                .map(|pair| match pair {
                    [a, b] => hash_pair(*a, *b),
                    [a] => *a,
                    _ => unreachable!("chunks(2) yields one or two nodes"),
                })
                .collect();
            levels.push(next);
        }
        MerkleTree { levels }
    }

    pub fn len(&self) -> usize {
        self.levels[0].len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels[0].is_empty()
    }

    pub fn root(&self) -> B256 {
        self.levels
            .last()
            .and_then(|top| top.first())
            .copied()
            .unwrap_or(B256::ZERO)
    }

    /// The siblings from leaf `index` up to the root, or `None` past the end.
    pub fn proof(&self, index: usize) -> Option<Vec<B256>> {
        if index >= self.len() {
            return None;
        }
        let mut proof = Vec::new();
        let mut at = index;
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = at ^ 1;
            if let Some(node) = level.get(sibling) {
                proof.push(*node);
            }
            at /= 2;
        }
        Some(proof)
    }
}

/// Recomputes a root from a leaf and its proof.
pub fn root_from_proof(leaf: B256, proof: &[B256]) -> B256 {
    proof
        .iter()
        .fold(leaf, |node, sibling| hash_pair(node, *sibling))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<B256> {
        (0..n).map(|i| leaf(&(i as u64).to_be_bytes())).collect()
    }

    #[test]
    fn every_leaf_of_every_shape_proves_against_the_root() {
        for n in 1..=33 {
            let tree = MerkleTree::new(leaves(n));
            for (i, l) in leaves(n).into_iter().enumerate() {
                let proof = tree.proof(i).expect("in range");
                assert!(proof.len() <= (usize::BITS - n.leading_zeros()) as usize);
                assert_eq!(root_from_proof(l, &proof), tree.root(), "n={n} i={i}");
            }
            assert!(tree.proof(n).is_none());
        }
    }

    #[test]
    fn a_changed_leaf_or_sibling_does_not_prove() {
        let tree = MerkleTree::new(leaves(10));
        let proof = tree.proof(3).expect("in range");
        assert_ne!(root_from_proof(leaves(10)[4], &proof), tree.root());
        let mut bad = proof.clone();
        bad[1] = B256::repeat_byte(7);
        assert_ne!(root_from_proof(leaves(10)[3], &bad), tree.root());
    }

    #[test]
    fn the_empty_tree_has_a_zero_root_and_one_leaf_is_its_own_root() {
        assert_eq!(MerkleTree::new(vec![]).root(), B256::ZERO);
        let one = leaves(1);
        assert_eq!(MerkleTree::new(one.clone()).root(), one[0]);
    }
}
