//! The sans-IO core of Dharti, a peer-to-peer energy market.
//!
//! Everything here is a pure function or a state machine fed with inputs:
//! it opens no socket or file, reads no clock and draws no randomness of its
//! own. Time arrives as `now_s` arguments. The same inputs, in any order, give
//! bit-identical outputs, which is what lets every node of a market compute
//! the same result and the simulator replay any run from its seed.
//!
//! - [`types`]: markets, intervals, sides, participants.
//! - [`offer`]: offers, their canonical encoding and ed25519 signatures.
//! - [`validation`]: Accept / Ignore / Reject for arriving offers; the offer
//!   pool whose book and set root depend only on which offers arrived.
//! - [`places`]: sets of members by their place in the member list, a bit each.
//! - [`intervals`]: the few intervals a node holds, by interval.
//! - [`reconcile`]: range-based set reconciliation of offer ids.
//! - [`node`]: the per-participant state machine that agrees on each
//!   interval's offer set and result.
//! - [`tariff`]: feed-in, retail and grid fee, by time of day.
//! - [`clearing`]: the market mechanisms.
//! - [`pricing`]: indicative prices for upcoming intervals.
//! - [`settlement`]: who pays whom once the meters have spoken.
//! - [`verify`]: signature checking behind one interface.
//! - [`agent`]: a household's trading agent (offers and battery dispatch).

#![forbid(unsafe_code)]

pub mod agent;
pub mod clearing;
pub mod hash;
pub mod intervals;
pub mod node;
pub mod offer;
pub mod places;
pub mod pricing;
pub mod reconcile;
pub mod settlement;
pub mod tariff;
pub mod types;
pub mod validation;
pub mod verify;
