//! The JSON order-book format of `dharti market clear` (docs/market.md):
//! parsing with errors that point at the problem, and clearing.

use std::collections::HashSet;

use anyhow::{Context, bail};
use dharti_protocol::clearing::{ClearError, ClearingResult, Mechanism, Order, clear};
use dharti_protocol::tariff::Tariff;
use dharti_protocol::types::Side;
use serde::Deserialize;

/// An order book as users write it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BookFile {
    /// Defaults to pay-as-clear.
    #[serde(default)]
    mechanism: Option<String>,
    tariff: Tariff,
    offers: Vec<OfferEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OfferEntry {
    id: String,
    participant: String,
    side: Side,
    energy_wh: u64,
    price_micro_per_kwh: u64,
}

/// Parses `text` as an order book and clears it; `mechanism` overrides the
/// book's own choice.
pub fn clear_json(
    text: &str,
    mechanism: Option<&str>,
) -> anyhow::Result<ClearingResult<String, String>> {
    let book: BookFile = serde_json::from_str(text)
        .context("the order book is not valid JSON in the expected format (see docs/market.md)")?;
    let name = mechanism
        .or(book.mechanism.as_deref())
        .unwrap_or("pay-as-clear");
    let mechanism: Mechanism = name.parse()?;
    let mut seen = HashSet::with_capacity(book.offers.len());
    for offer in &book.offers {
        if !seen.insert(offer.id.as_str()) {
            bail!(
                "offer id {:?} appears more than once; every offer needs its own id",
                offer.id
            );
        }
    }
    let orders: Vec<Order<String, String>> = book
        .offers
        .into_iter()
        .map(|o| Order {
            id: o.id,
            participant: o.participant,
            side: o.side,
            energy_wh: o.energy_wh,
            price_micro_per_kwh: o.price_micro_per_kwh,
        })
        .collect();
    clear(mechanism, &book.tariff, &orders).map_err(|error| {
        let which = match &error {
            ClearError::ZeroEnergy { index }
            | ClearError::EnergyTooLarge { index, .. }
            | ClearError::PriceOutOfBounds { index, .. } => Some(&orders[*index].id),
            _ => None,
        };
        match which {
            Some(id) => anyhow::anyhow!("offer {id:?}: {error}"),
            None => anyhow::anyhow!(error),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"mechanism": "pay-as-clear",
 "tariff": {"feed_in_micro_per_kwh": 80000, "retail_micro_per_kwh": 300000, "grid_fee_micro_per_kwh": 0},
 "offers": [
   {"id": "b1", "participant": "alice", "side": "bid", "energy_wh": 1500, "price_micro_per_kwh": 200000},
   {"id": "a1", "participant": "bob", "side": "ask", "energy_wh": 1000, "price_micro_per_kwh": 120000}]}"#;

    #[test]
    fn the_issue_example_clears_as_documented() {
        let result = clear_json(EXAMPLE, None).unwrap();
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(json["mechanism"], "pay-as-clear");
        assert_eq!(json["clearing_price_micro_per_kwh"], 160_000);
        assert_eq!(json["volume_wh"], 1000);
        let trade = &json["trades"][0];
        for (field, value) in [
            ("bid_id", "b1"),
            ("ask_id", "a1"),
            ("buyer", "alice"),
            ("seller", "bob"),
        ] {
            assert_eq!(trade[field], value);
        }
        assert_eq!(trade["value_micro"], 160_000);
        assert_eq!(json["result_hash"].as_str().unwrap().len(), 64);
    }

    #[test]
    fn the_flag_overrides_the_file() {
        let result = clear_json(EXAMPLE, Some("pay-as-bid")).unwrap();
        assert_eq!(result.clearing_price_micro_per_kwh, Some(200_000));
    }

    fn error_of(text: &str, mechanism: Option<&str>) -> String {
        format!("{:#}", clear_json(text, mechanism).unwrap_err())
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(error_of("{", None).contains("not valid JSON"));
        assert!(error_of(EXAMPLE, Some("auction")).contains("unknown mechanism \"auction\""));
        let negative = EXAMPLE.replace("\"energy_wh\": 1500", "\"energy_wh\": -1500");
        assert!(error_of(&negative, None).contains("invalid value: integer `-1500`"));
        let absurd = EXAMPLE.replace("\"energy_wh\": 1500", "\"energy_wh\": 99999999999999999");
        assert!(error_of(&absurd, None).contains("offer \"b1\""));
        let typo = EXAMPLE.replace("\"side\": \"bid\"", "\"sde\": \"bid\"");
        assert!(error_of(&typo, None).contains("unknown field `sde`"));
        let twice = EXAMPLE.replace("\"a1\"", "\"b1\"");
        assert!(error_of(&twice, None).contains("appears more than once"));
        let swapped = EXAMPLE.replace("80000", "400000");
        assert!(error_of(&swapped, None).contains("must not exceed the retail tariff"));
    }
}
