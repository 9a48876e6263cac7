//! placeholder while the storage crate is written
