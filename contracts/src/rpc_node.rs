//! The JSON-RPC methods of `dharti chain node`: the embedded chain served
//! to several processes (the demo's daemons), as a small Ethereum node.
//!
//! Only what Dharti's client and common tools use: `eth_chainId`,
//! `net_version`, `web3_clientVersion`, `eth_blockNumber`, `eth_getBalance`,
//! `eth_getTransactionCount`, `eth_gasPrice`, `eth_maxPriorityFeePerGas`,
//! `eth_estimateGas`, `eth_call`, `eth_sendRawTransaction`,
//! `eth_getTransactionReceipt`, and anvil's `anvil_setBalance` (a
//! development chain mints). Block tags are accepted and ignored: there is
//! only the latest state. [`serve`] answers them over HTTP and mines an
//! empty block every `block_time`, so confirmations advance.

use std::time::Duration;

use alloy::primitives::{Address, B256, Bytes, U256, keccak256};
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};

use crate::chain::{ChainError, LOCAL_CHAIN_ID};
use crate::embedded::{EmbeddedChain, MinedTx};

/// Serves the chain on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    chain: EmbeddedChain,
    block_time: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let miner = {
        let chain = chain.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(block_time);
            tick.tick().await;
            loop {
                tick.tick().await;
                chain.mine_empty();
            }
        })
    };
    let app = axum::Router::new().route("/", post(rpc)).with_state(chain);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    miner.abort();
    served
}

async fn rpc(State(chain): State<EmbeddedChain>, body: axum::body::Bytes) -> axum::Json<Value> {
    let answer = match serde_json::from_slice::<Value>(&body) {
        // A job takes about a millisecond; off the async workers anyway.
        Ok(request) => tokio::task::spawn_blocking(move || handle(&chain, &request))
            .await
            .unwrap_or_else(
                |e| json!({ "jsonrpc": "2.0", "id": null, "error": error(-32603, e.to_string()) }),
            ),
        Err(e) => {
            json!({ "jsonrpc": "2.0", "id": null, "error": error(-32700, format!("parse error: {e}")) })
        }
    };
    axum::Json(answer)
}

/// Answers one JSON-RPC request object (a batch is an array of them).
pub fn handle(chain: &EmbeddedChain, request: &Value) -> Value {
    if let Value::Array(items) = request {
        return Value::Array(items.iter().map(|r| handle(chain, r)).collect());
    }
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let method = request.get("method").and_then(Value::as_str).unwrap_or("");
    let params = request
        .get("params")
        .cloned()
        .unwrap_or(Value::Array(Vec::new()));
    match dispatch(chain, method, &params) {
        Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        Err(error) => json!({ "jsonrpc": "2.0", "id": id, "error": error }),
    }
}

fn error(code: i64, message: impl Into<String>) -> Value {
    json!({ "code": code, "message": message.into() })
}

fn chain_error(e: ChainError) -> Value {
    match e {
        ChainError::Reverted { reason, data } => json!({
            "code": 3,
            "message": format!("execution reverted: {reason}"),
            "data": data.to_string(),
        }),
        other => error(-32000, other.to_string()),
    }
}

fn hex(n: impl Into<U256>) -> Value {
    Value::String(format!("{:#x}", n.into()))
}

fn param<T: serde::de::DeserializeOwned>(
    params: &Value,
    index: usize,
    what: &str,
) -> Result<T, Value> {
    let value = params
        .get(index)
        .cloned()
        .ok_or_else(|| error(-32602, format!("missing parameter {index} ({what})")))?;
    serde_json::from_value(value)
        .map_err(|e| error(-32602, format!("parameter {index} ({what}): {e}")))
}

/// The fields of a transaction object this node uses.
#[derive(serde::Deserialize, Default)]
struct CallObject {
    from: Option<Address>,
    to: Option<Address>,
    #[serde(alias = "input")]
    data: Option<Bytes>,
    value: Option<U256>,
}

fn dispatch(chain: &EmbeddedChain, method: &str, params: &Value) -> Result<Value, Value> {
    match method {
        "eth_chainId" => Ok(hex(U256::from(LOCAL_CHAIN_ID))),
        "net_version" => Ok(Value::String(LOCAL_CHAIN_ID.to_string())),
        "web3_clientVersion" => Ok(Value::String(format!(
            "dharti-embedded/{}",
            env!("CARGO_PKG_VERSION")
        ))),
        "eth_blockNumber" => Ok(hex(U256::from(chain.block_number()))),
        "eth_gasPrice" | "eth_maxPriorityFeePerGas" => Ok(hex(U256::ZERO)),
        "eth_getBalance" => {
            let account: Address = param(params, 0, "address")?;
            Ok(hex(chain.balance(account)))
        }
        "eth_getTransactionCount" => {
            let account: Address = param(params, 0, "address")?;
            Ok(hex(U256::from(chain.nonce(account))))
        }
        "eth_call" | "eth_estimateGas" => {
            let call: CallObject = param(params, 0, "transaction")?;
            let from = call.from.unwrap_or(Address::ZERO);
            let input = call.data.unwrap_or_default();
            let value = call.value.unwrap_or_default();
            if method == "eth_call" {
                chain
                    .call(from, call.to, input, value)
                    .map(|out| Value::String(out.to_string()))
                    .map_err(chain_error)
            } else {
                chain
                    .estimate(from, call.to, input, value)
                    .map(|gas| hex(U256::from(gas)))
                    .map_err(chain_error)
            }
        }
        "eth_sendRawTransaction" => {
            let raw: Bytes = param(params, 0, "signed transaction")?;
            chain
                .send_raw(raw)
                .map(|hash| Value::String(hash.to_string()))
                .map_err(chain_error)
        }
        "eth_getTransactionReceipt" => {
            let hash: B256 = param(params, 0, "transaction hash")?;
            Ok(chain
                .receipt(hash)
                .as_ref()
                .map(receipt_json)
                .unwrap_or(Value::Null))
        }
        "anvil_setBalance" => {
            let account: Address = param(params, 0, "address")?;
            let amount: U256 = param(params, 1, "balance")?;
            chain.set_balance(account, amount);
            Ok(Value::Null)
        }
        other => Err(error(
            -32601,
            format!("method {other:?} is not served by the embedded chain"),
        )),
    }
}

fn block_hash(number: u64) -> B256 {
    keccak256(number.to_be_bytes())
}

fn receipt_json(tx: &MinedTx) -> Value {
    let block = hex(U256::from(tx.block_number));
    let block_hash = block_hash(tx.block_number).to_string();
    let logs: Vec<Value> = tx
        .logs
        .iter()
        .enumerate()
        .map(|(i, log)| {
            json!({
                "address": log.address,
                "topics": log.data.topics(),
                "data": log.data.data,
                "blockHash": block_hash,
                "blockNumber": block,
                "transactionHash": tx.hash,
                "transactionIndex": "0x0",
                "logIndex": hex(U256::from(i)),
                "removed": false,
            })
        })
        .collect();
    json!({
        "type": "0x0",
        "status": if tx.success { "0x1" } else { "0x0" },
        "transactionHash": tx.hash,
        "transactionIndex": "0x0",
        "blockHash": block_hash,
        "blockNumber": block,
        "from": tx.from,
        "to": tx.to,
        "contractAddress": tx.contract_address,
        "gasUsed": hex(U256::from(tx.gas_used)),
        "cumulativeGasUsed": hex(U256::from(tx.gas_used)),
        "effectiveGasPrice": "0x0",
        "logs": logs,
        "logsBloom": format!("0x{}", "0".repeat(512)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_and_bad_parameters_are_errors_not_panics() {
        let chain = EmbeddedChain::new();
        let answer = handle(
            &chain,
            &json!({"jsonrpc": "2.0", "id": 1, "method": "eth_mine"}),
        );
        assert_eq!(answer["error"]["code"], -32601);
        let answer = handle(
            &chain,
            &json!({"jsonrpc": "2.0", "id": 2, "method": "eth_getBalance", "params": ["nope"]}),
        );
        assert_eq!(answer["error"]["code"], -32602);
        let answer = handle(
            &chain,
            &json!({"jsonrpc": "2.0", "id": 3, "method": "eth_sendRawTransaction", "params": ["0x0102"]}),
        );
        assert_eq!(answer["error"]["code"], -32000);
        let batch = handle(
            &chain,
            &json!([{"jsonrpc": "2.0", "id": 4, "method": "eth_chainId"}, {"jsonrpc": "2.0", "id": 5, "method": "eth_blockNumber"}]),
        );
        assert_eq!(batch[0]["result"], "0x12047");
        assert_eq!(batch[1]["id"], 5);
    }
}
