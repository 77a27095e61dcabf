//! The sandbox upstream as HTTP: turns `core::sandbox` replies into responses shaped like the
//! router's, streamed with a small delay between chunks so local streaming looks real.

use crate::core::body;
use crate::core::error::GatewayError;
use crate::core::keys::random_id;
use crate::core::paths::{Api, Metering, ProxyRoute};
use crate::core::sandbox;
use crate::core::settings::Settings;
use crate::edge::platform::{self, OsRng};
use crate::edge::response::Response;
use futures_util::stream;
use worker::Headers;

fn respond_json(status: u16, v: &serde_json::Value) -> Result<Response, GatewayError> {
    let h = Headers::new();
    let _ = h.set("content-type", "application/json");
    let _ = h.set("x-request-id", &random_id(&mut OsRng));
    // the sandbox is the one provider its /v1/models lists, and says so as the router would
    let _ = h.set("x-inference-provider", "sandbox");
    crate::edge::response::bytes(status, v.to_string().into_bytes(), h)
        .map_err(|_| GatewayError::UpstreamError("sandbox".into()))
}

fn respond_sse(events: Vec<String>, delay_ms: u64) -> Result<Response, GatewayError> {
    let h = Headers::new();
    let _ = h.set("content-type", "text/event-stream");
    let _ = h.set("cache-control", "no-cache");
    let _ = h.set("x-request-id", &random_id(&mut OsRng));
    let _ = h.set("x-inference-provider", "sandbox");
    let chunks = stream::unfold((events.into_iter(), true), move |(mut it, first)| async move {
        let next = it.next()?;
        if !first && delay_ms > 0 {
            platform::sleep_ms(delay_ms).await;
        }
        Some((Ok::<Vec<u8>, worker::Error>(next.into_bytes()), (it, false)))
    });
    crate::edge::response::of_stream(200, &crate::edge::body_io::to_runtime(chunks), &h)
        .map_err(|_| GatewayError::UpstreamError("sandbox".into()))
}

/// Answers one upstream call in-process. `body` is what the gateway would send upstream.
pub async fn respond(s: &Settings, route: &ProxyRoute, body_bytes: &[u8]) -> Result<Response, GatewayError> {
    let path = route.path.as_str();
    let created = platform::now().0 / 1000;
    let id = format!("sbx-{}", random_id(&mut OsRng));
    let rest = path.strip_prefix('/').and_then(|p| p.split_once('/')).map_or(path, |(first, rest)| {
        if crate::core::paths::PROVIDERS.contains(&first) {
            rest
        } else {
            &path[1..]
        }
    });
    // the API a call speaks was decided where its path was parsed
    let api = match route.metering {
        Metering::Tokens(api @ (Api::Chat | Api::Responses)) => Some(api),
        _ => None,
    };
    match rest {
        _ if route.metering == Metering::Tokens(Api::Embeddings) => {
            body::inspect(body_bytes, Api::Embeddings, s.media_part_tokens)?;
            respond_json(200, &sandbox::embeddings(body_bytes))
        }
        _ if api.is_some() => {
            let responses_api = api == Some(Api::Responses);
            let shape = body::inspect(body_bytes, api.unwrap_or(Api::Chat), s.media_part_tokens)?;
            // the gateway always sends a bound; the sandbox keeps to it like a provider would
            let reply = sandbox::reply(body_bytes, shape.requested_output.unwrap_or(1024));
            match (shape.stream, responses_api) {
                (false, false) => respond_json(200, &reply.chat_completion(&id, created)),
                (false, true) => respond_json(200, &reply.response(&id, created)),
                (true, false) => {
                    respond_sse(reply.chat_chunks(&id, created, shape.caller_wants_usage), s.sandbox_chunk_delay_ms)
                }
                (true, true) => respond_sse(reply.response_events(&id, created), s.sandbox_chunk_delay_ms),
            }
        }
        "v1/models" => respond_json(200, &sandbox::models(&s.prices)),
        _ if rest.starts_with("v1/models/") => {
            let wanted = &rest["v1/models/".len()..];
            let list = sandbox::models(&s.prices);
            let found = list["data"].as_array().and_then(|d| d.iter().find(|m| m["id"] == wanted)).cloned();
            match found {
                Some(m) => respond_json(200, &m),
                None => respond_json(
                    404,
                    &serde_json::json!({"error": {"message": format!("model {wanted} not found"), "type": "not_found_error", "code": "model_not_found"}}),
                ),
            }
        }
        _ if rest.starts_with("models/") => {
            let model = &rest["models/".len()..];
            respond_json(200, &serde_json::json!([{"label": "sandbox", "score": 1.0, "model": model}]))
        }
        _ => respond_json(
            404,
            &serde_json::json!({"error": {"message": "the sandbox does not serve this route", "type": "not_found_error", "code": "not_found"}}),
        ),
    }
}

/// The sandbox's `/v1/models` body (the price book's source when the upstream is the sandbox).
pub fn models_body(s: &Settings) -> Vec<u8> {
    sandbox::models(&s.prices).to_string().into_bytes()
}
