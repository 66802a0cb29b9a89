//! `hello-p3`: a WASI 0.3 (`wasi:http/handler@0.3.0`) component, the p3 counterpart of
//! `hello`. Answers `Hello from wasi:http 0.3! (request N of this instance)`, counting the
//! requests its instance has taken, so a test can see which ones shared an instance.
//! `?delay_ms=N` first waits N milliseconds on the host's clock (an `async` wait: other
//! requests can run in the same instance meanwhile); `?trap=1` traps; `?cut=N` answers 200,
//! writes `partial\n`, waits N milliseconds (so the client has the headers and that much) and
//! traps before the body is finished; `?self=PATH` answers with the
//! status and body of `GET http://self/PATH` instead (the route must allow `http://self`).

use std::cell::Cell;
use wasip3::http::types::{ErrorCode, Fields, Request, Response, Scheme};
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(HelloP3);

thread_local! {
    static REQUESTS: Cell<u64> = const { Cell::new(0) };
}

struct HelloP3;

impl wasip3::exports::http::handler::Guest for HelloP3 {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let number = REQUESTS.with(|requests| {
            requests.set(requests.get() + 1);
            requests.get()
        });
        let query = request.get_path_with_query().unwrap_or_default();
        let delay_ms = query_number(&query, "delay_ms");
        if delay_ms > 0 {
            wasip3::clocks::monotonic_clock::wait_for(delay_ms.saturating_mul(1_000_000)).await;
        }
        if query_number(&query, "trap") > 0 {
            panic!("trapping on purpose at request {number}");
        }
        let cut_after_ms = query_number(&query, "cut");
        let cut = cut_after_ms > 0;
        let text = match query_text(&query, "self") {
            Some(path) => call_self(&path).await?,
            None => format!("Hello from wasi:http 0.3! (request {number} of this instance)\n"),
        };

        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
        let (mut body_tx, body_rx) = wit_stream::new();
        let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(headers, Some(body_rx), trailers_rx);
        drop(trailers_tx);
        wit_bindgen::spawn(async move {
            if cut {
                let _ = body_tx.write_all(b"partial\n".to_vec()).await;
                wasip3::clocks::monotonic_clock::wait_for(cut_after_ms.saturating_mul(1_000_000))
                    .await;
                panic!("trapping on purpose halfway through the body");
            }
            let _ = body_tx.write_all(text.into_bytes()).await;
        });
        Ok(response)
    }
}

/// `GET http://self/PATH`: `STATUS BODY`.
async fn call_self(path: &str) -> Result<String, ErrorCode> {
    let (_, no_trailers) = wit_future::new(|| Ok(None));
    let (request, _sent) = Request::new(Fields::new(), None, no_trailers, None);
    let _ = request.set_scheme(Some(&Scheme::Http));
    let _ = request.set_authority(Some("self"));
    let _ = request.set_path_with_query(Some(&format!("/{}", path.trim_start_matches('/'))));
    let response = wasip3::http::client::send(request).await?;
    let status = response.get_status_code();
    let (_, done) = wit_future::new(|| Ok(()));
    let (body, _trailers) = Response::consume_body(response, done);
    let body = body.collect().await;
    Ok(format!("{status} {}", String::from_utf8_lossy(&body)))
}

/// The text after `NAME=` in a query, if it is there.
fn query_text(path_with_query: &str, name: &str) -> Option<String> {
    let query = path_with_query.split_once('?').map_or("", |(_, query)| query);
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

/// The number after `NAME=` in a query, 0 if it is absent or not a number.
fn query_number(path_with_query: &str, name: &str) -> u64 {
    query_text(path_with_query, name)
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}
