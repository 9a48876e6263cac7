//! The HTTP API (axum), bound to 127.0.0.1 by default. Reads are open to
//! whoever can reach the socket; writes need `Authorization: Bearer TOKEN`
//! with the token `dharti init` wrote (mode 0600). The OpenAPI document is
//! generated from these handlers (utoipa) and served at
//! `/api/v1/openapi.json`; docs/api.md is checked against it by a test.
//! `/metrics` serves the Prometheus registry shared with libp2p.

// Handlers return a ready `Response` as their error: built once per
// request on the way out, its size does not matter.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use dharti_protocol::types::{IntervalIndex, MarketId, ParticipantId, Side};
use dharti_storage::Store;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::driver::{Arrival, MarketView, OfferView, Request, Status};
use crate::metrics::Metrics;
use crate::network::{Command, PeerInfo};

/// History endpoints return at most this many intervals.
const MAX_HISTORY_INTERVALS: u64 = 96;

#[derive(Clone)]
pub struct ApiState {
    pub requests: mpsc::Sender<Request>,
    pub net: mpsc::Sender<Command>,
    pub store: Arc<Store>,
    pub market: MarketId,
    pub me: ParticipantId,
    pub token: Arc<str>,
    pub registry: Arc<Registry>,
    pub metrics: Metrics,
    /// `[chain]`, when the node anchors (for trade proofs).
    pub chain: Option<crate::anchor::ChainSettings>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    pub error: String,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("market", &self.market)
            .finish_non_exhaustive()
    }
}

fn error(status: StatusCode, text: impl Into<String>) -> Response {
    (status, Json(ApiError { error: text.into() })).into_response()
}

async fn ask<T>(
    state: &ApiState,
    make: impl FnOnce(oneshot::Sender<T>) -> Request,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    state.requests.send(make(tx)).await.map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the market task has stopped",
        )
    })?;
    rx.await.map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the market task has stopped",
        )
    })
}

fn authorized(state: &ApiState, headers: &HeaderMap) -> Result<(), Response> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare without an early exit on the first differing byte.
    let ok = given.is_some_and(|g| {
        g.len() == state.token.len()
            && g.bytes()
                .zip(state.token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if ok {
        Ok(())
    } else {
        state.metrics.api_unauthorized.inc();
        Err(error(
            StatusCode::UNAUTHORIZED,
            "writes need `Authorization: Bearer TOKEN` with the token in the node's api.token file",
        ))
    }
}

#[utoipa::path(get, path = "/api/v1/status", responses((status = 200, body = Status)))]
async fn status(State(state): State<ApiState>) -> Response {
    match ask(&state, Request::Status).await {
        Ok(s) => Json(s).into_response(),
        Err(r) => r,
    }
}

#[utoipa::path(get, path = "/api/v1/market", responses((status = 200, body = MarketView)))]
async fn market(State(state): State<ApiState>) -> Response {
    match ask(&state, Request::Market).await {
        Ok(m) => Json(m).into_response(),
        Err(r) => r,
    }
}

#[utoipa::path(get, path = "/api/v1/offers", responses((status = 200, body = Vec<OfferView>)))]
async fn offers(State(state): State<ApiState>) -> Response {
    match ask(&state, Request::Offers).await {
        Ok(o) => Json(o).into_response(),
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOffer {
    /// Interval index; default: the next one whose gate is open.
    pub interval: Option<u64>,
    /// "bid" (buy) or "ask" (sell).
    pub side: String,
    pub energy_wh: u64,
    pub price_micro_per_kwh: u64,
}

fn side_of(text: &str) -> Result<Side, Response> {
    match text {
        "bid" | "buy" => Ok(Side::Bid),
        "ask" | "sell" => Ok(Side::Ask),
        _ => Err(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("side {text:?}: use \"bid\" or \"ask\""),
        )),
    }
}

#[utoipa::path(post, path = "/api/v1/offers", request_body = NewOffer,
    responses((status = 201, body = OfferView), (status = 401, body = ApiError), (status = 422, body = ApiError)),
    security(("bearer" = [])))]
async fn post_offer(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<NewOffer>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Err(r) = authorized(&state, &headers) {
        return r;
    }
    let Json(offer) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e.body_text()),
    };
    let side = match side_of(&offer.side) {
        Ok(s) => s,
        Err(r) => return r,
    };
    submit(
        &state,
        offer.interval,
        side,
        offer.energy_wh,
        offer.price_micro_per_kwh,
    )
    .await
}

async fn submit(
    state: &ApiState,
    interval: Option<u64>,
    side: Side,
    energy_wh: u64,
    price: u64,
) -> Response {
    let result = ask(state, |reply| Request::Submit {
        interval,
        side,
        energy_wh,
        price_micro_per_kwh: price,
        reply,
    })
    .await;
    match result {
        Ok(Ok(view)) => (StatusCode::CREATED, Json(view)).into_response(),
        Ok(Err(reason)) => error(StatusCode::UNPROCESSABLE_ENTITY, reason),
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct CancelQuery {
    pub interval: u64,
    /// "bid" or "ask".
    pub side: String,
}

#[utoipa::path(delete, path = "/api/v1/offers", params(CancelQuery),
    responses((status = 201, body = OfferView), (status = 401, body = ApiError), (status = 422, body = ApiError)),
    security(("bearer" = [])))]
async fn delete_offer(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<CancelQuery>,
) -> Response {
    if let Err(r) = authorized(&state, &headers) {
        return r;
    }
    let side = match side_of(&q.side) {
        Ok(s) => s,
        Err(r) => return r,
    };
    // A cancel is an offer of zero energy with the next sequence number.
    submit(&state, Some(q.interval), side, 0, 0).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IntervalView {
    pub interval: u64,
    /// The final clearing result (trades, price, result hash), if any.
    #[schema(value_type = Object)]
    pub result: Option<serde_json::Value>,
    /// Offers in the final set once the interval is final; before that,
    /// the offers this node holds for it.
    pub offers: usize,
    #[schema(value_type = Object)]
    pub settlement: Option<serde_json::Value>,
}

fn read_error(e: impl std::fmt::Display) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, format!("storage: {e}"))
}

#[utoipa::path(get, path = "/api/v1/intervals/{n}", params(("n" = u64, Path, description = "interval index")),
    responses((status = 200, body = IntervalView), (status = 404, body = ApiError)))]
async fn interval(State(state): State<ApiState>, Path(n): Path<u64>) -> Response {
    let i = IntervalIndex(n);
    let result = match state.store.result(&state.market, i) {
        Ok(r) => r,
        Err(e) => return read_error(e),
    };
    // The final set once there is one; before that, what the node holds.
    let offers = match state.store.final_set(&state.market, i) {
        Ok(Some((proof, _))) => proof.offer_ids.len(),
        Ok(None) => match state.store.offers(&state.market, i) {
            Ok(o) => o.len(),
            Err(e) => return read_error(e),
        },
        Err(e) => return read_error(e),
    };
    let settlement = match state.store.settlement(&state.market, i) {
        Ok(s) => s,
        Err(e) => return read_error(e),
    };
    if result.is_none() && offers == 0 {
        return error(
            StatusCode::NOT_FOUND,
            format!("interval {n} is not in this node's history"),
        );
    }
    Json(IntervalView {
        interval: n,
        result: result.map(|r| serde_json::to_value(r).unwrap_or_default()),
        offers,
        settlement: settlement.map(|s| serde_json::to_value(s).unwrap_or_default()),
    })
    .into_response()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TradeView {
    /// `INTERVAL-BID_ID-ASK_ID`: what `dharti proof` takes.
    pub trade_id: String,
    pub interval: u64,
    /// "buy" or "sell", from this node's side.
    pub direction: String,
    pub energy_wh: u64,
    pub price_micro_per_kwh: u64,
    pub value_micro: u64,
    pub grid_fee_micro: u64,
    pub counterparty: String,
}

/// The most recent final intervals, newest first.
fn recent(state: &ApiState) -> Result<Vec<IntervalIndex>, Response> {
    let last = state
        .store
        .last_result_interval(&state.market)
        .map_err(read_error)?;
    Ok(last.map_or_else(Vec::new, |last| {
        (last.0.saturating_sub(MAX_HISTORY_INTERVALS - 1)..=last.0)
            .rev()
            .map(IntervalIndex)
            .collect()
    }))
}

#[utoipa::path(get, path = "/api/v1/trades", responses((status = 200, body = Vec<TradeView>)))]
async fn trades(State(state): State<ApiState>) -> Response {
    let intervals = match recent(&state) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let mut out = Vec::new();
    for i in intervals {
        let Ok(Some(result)) = state.store.result(&state.market, i) else {
            continue;
        };
        for t in &result.trades {
            let (direction, counterparty) = if t.buyer == state.me {
                ("buy", t.seller)
            } else if t.seller == state.me {
                ("sell", t.buyer)
            } else {
                continue;
            };
            out.push(TradeView {
                trade_id: format!("{}-{}-{}", i.0, t.bid_id, t.ask_id),
                interval: i.0,
                direction: direction.into(),
                energy_wh: t.energy_wh,
                price_micro_per_kwh: t.price_micro_per_kwh,
                value_micro: t.value_micro,
                grid_fee_micro: t.grid_fee_micro,
                counterparty: counterparty.to_string(),
            });
        }
    }
    Json(out).into_response()
}

/// A trade's record in its settlement batch and its Merkle proof.
#[derive(Clone, Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ProofView {
    pub trade_id: String,
    /// The batch number on the ledger.
    pub batch: u64,
    pub market_index: u32,
    pub interval: u64,
    pub bid_id: String,
    pub ask_id: String,
    pub buyer: String,
    pub seller: String,
    pub energy_wh: u64,
    pub price_micro_per_kwh: u64,
    pub value_micro: u64,
    pub grid_fee_micro: u64,
    pub surplus_micro: u64,
    /// The record's leaf, sibling hashes up to the records root, both roots.
    #[schema(value_type = String)]
    pub leaf: dharti_contracts::alloy::primitives::B256,
    #[schema(value_type = Vec<String>)]
    pub proof: Vec<dharti_contracts::alloy::primitives::B256>,
    #[schema(value_type = String)]
    pub records_root: dharti_contracts::alloy::primitives::B256,
    #[schema(value_type = String)]
    pub net_root: dharti_contracts::alloy::primitives::B256,
}

impl ProofView {
    /// The record as the ledger's `verifyTrade` takes it.
    pub fn record(
        &self,
    ) -> anyhow::Result<dharti_contracts::bindings::SettlementLedger::TradeRecord> {
        use anyhow::Context as _;
        Ok(dharti_contracts::bindings::SettlementLedger::TradeRecord {
            interval: self.interval,
            bidId: self.bid_id.parse().context("bid_id")?,
            askId: self.ask_id.parse().context("ask_id")?,
            buyer: self.buyer.parse().context("buyer")?,
            seller: self.seller.parse().context("seller")?,
            energyWh: self.energy_wh,
            priceMicroPerKwh: self.price_micro_per_kwh,
            valueMicro: self.value_micro,
            gridFeeMicro: self.grid_fee_micro,
            surplusMicro: self.surplus_micro,
        })
    }
}

#[utoipa::path(get, path = "/api/v1/proof/{trade_id}", params(("trade_id" = String, Path, description = "INTERVAL-BID_ID-ASK_ID, as /api/v1/trades lists it")),
    responses((status = 200, body = ProofView), (status = 404, body = ApiError)))]
async fn proof(State(state): State<ApiState>, Path(trade_id): Path<String>) -> Response {
    let Some(settings) = state.chain.as_ref() else {
        return error(
            StatusCode::NOT_FOUND,
            "this node does not anchor settlements (chain.preset = \"none\")",
        );
    };
    let mut parts = trade_id.splitn(3, '-');
    let (Some(interval), Some(bid), Some(ask)) = (parts.next(), parts.next(), parts.next()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "a trade id is INTERVAL-BID_ID-ASK_ID (see /api/v1/trades)",
        );
    };
    let Ok(interval) = interval.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "the trade id's interval is not a number",
        );
    };
    if interval < settings.anchor_from {
        return error(
            StatusCode::NOT_FOUND,
            "that interval is before chain.anchor_from_interval: never anchored",
        );
    }
    let batch_number = (interval - settings.anchor_from) / settings.batch_intervals;
    let batch = match crate::anchor::build_batch(&state.store, state.market, settings, batch_number)
    {
        Ok(Some(batch)) => batch,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("batch {batch_number} is not complete here yet"),
            );
        }
        Err(e) => return read_error(e),
    };
    let found = batch.trades.iter().position(|t| {
        t.interval == interval && hex::encode(t.bidId) == bid && hex::encode(t.askId) == ask
    });
    let Some(index) = found else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no trade {trade_id} in batch {batch_number}"),
        );
    };
    let t = &batch.trades[index];
    Json(ProofView {
        trade_id,
        batch: batch_number,
        market_index: settings.market_index,
        interval,
        bid_id: t.bidId.to_string(),
        ask_id: t.askId.to_string(),
        buyer: t.buyer.to_string(),
        seller: t.seller.to_string(),
        energy_wh: t.energyWh,
        price_micro_per_kwh: t.priceMicroPerKwh,
        value_micro: t.valueMicro,
        grid_fee_micro: t.gridFeeMicro,
        surplus_micro: t.surplusMicro,
        leaf: dharti_contracts::batch::trade_leaf(settings.market_index, t),
        proof: batch.trade_proof(index).unwrap_or_default(),
        records_root: batch.header.recordsRoot,
        net_root: batch.header.netRoot,
    })
    .into_response()
}

#[utoipa::path(get, path = "/api/v1/settlements", responses((status = 200, body = Vec<Object>)))]
async fn settlements(State(state): State<ApiState>) -> Response {
    let intervals = match recent(&state) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let out: Vec<serde_json::Value> = intervals
        .into_iter()
        .filter_map(|i| state.store.settlement(&state.market, i).ok().flatten())
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .collect();
    Json(out).into_response()
}

#[utoipa::path(get, path = "/api/v1/peers", responses((status = 200, body = Vec<PeerInfo>)))]
async fn peers(State(state): State<ApiState>) -> Response {
    let (tx, rx) = oneshot::channel();
    if state.net.send(Command::Peers(tx)).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the network task has stopped",
        );
    }
    match rx.await {
        Ok(p) => Json(p).into_response(),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the network task has stopped",
        ),
    }
}

#[utoipa::path(get, path = "/api/v1/arrivals", responses((status = 200, body = Vec<Arrival>)))]
async fn arrivals(State(state): State<ApiState>) -> Response {
    match ask(&state, Request::Arrivals).await {
        Ok(a) => Json(a).into_response(),
        Err(r) => r,
    }
}

#[utoipa::path(get, path = "/api/v1/backup",
    responses((status = 200, description = "a snapshot of the history (Store::export format)", content_type = "application/octet-stream"),
        (status = 401, body = ApiError)),
    security(("bearer" = [])))]
async fn backup(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&state, &headers) {
        return r;
    }
    match ask(&state, Request::Snapshot).await {
        Ok(Ok(bytes)) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("snapshot: {e}")),
        Err(r) => r,
    }
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Dharti node API", description = "One Dharti node's view of its market. Writes need the bearer token from the node's api.token file."),
    paths(status, market, offers, post_offer, delete_offer, interval, trades, proof, settlements, peers, arrivals, backup),
    components(schemas(Status, MarketView, OfferView, NewOffer, ApiError, IntervalView, TradeView, ProofView, PeerInfo, Arrival)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

async fn openapi() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/market", get(market))
        .route(
            "/api/v1/offers",
            get(offers).post(post_offer).delete(delete_offer),
        )
        .route("/api/v1/intervals/{n}", get(interval))
        .route("/api/v1/proof/{trade_id}", get(proof))
        .route("/api/v1/trades", get(trades))
        .route("/api/v1/settlements", get(settlements))
        .route("/api/v1/peers", get(peers))
        .route("/api/v1/arrivals", get(arrivals))
        .route("/api/v1/backup", get(backup))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_api_md_lists_exactly_the_openapi_routes() {
        let doc = include_str!("../../docs/api.md");
        let openapi = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut routes = Vec::new();
        for (path, item) in openapi["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                routes.push(format!("`{} {path}`", method.to_uppercase()));
            }
        }
        routes.sort();
        for route in &routes {
            assert!(
                doc.contains(route.as_str()),
                "docs/api.md does not list {route}"
            );
        }
        // And nothing else: every `/api/v1/` route in the table is real
        // (the OpenAPI document itself is served but not described in it).
        let mut listed = 0;
        for line in doc.lines().filter(|l| l.starts_with("| `")) {
            let end = 3 + line[3..].find('`').unwrap();
            let route = &line[2..=end];
            if route.contains("/api/v1/") && !route.contains("openapi.json") {
                assert!(
                    routes.iter().any(|r| r == route),
                    "{route} is not in the OpenAPI document"
                );
                listed += 1;
            }
        }
        assert_eq!(listed, routes.len());
    }
}
