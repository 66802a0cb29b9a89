//! In-process calls between routes (`http://self/...`) and private routes.

mod common;

use common::*;
use http::StatusCode;

fn routes() -> String {
    format!(
        r#"
[[route]]
path = "/internal/hello/:name"
component = {hello}
private = true

[[route]]
path = "/public"
component = {outbound}
allowed_outbound_hosts = ["http://self"]

[[route]]
path = "/no-self"
component = {outbound}
allowed_outbound_hosts = ["http://127.0.0.1:*"]
"#,
        hello = toml_path(&guest("hello")),
        outbound = toml_path(&guest("outbound")),
    )
}

#[tokio::test]
async fn private_routes_are_404_from_outside_and_reachable_through_self() {
    let gw = Gateway::start(&routes());
    let (status, _, _) = get(&http1(), &gw.url("/internal/hello/outsider")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a private route is invisible from outside"
    );

    let url = gw.url(&format!(
        "/public?url={}",
        percent_encode("http://self/internal/hello/via-self")
    ));
    let (status, headers, body) = get(&http1(), &url).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "Hello, via-self!\n")
    );
    assert_eq!(headers["x-upstream-status"], "200");

    // A route that does not allow http://self is denied, even though it allows loopback.
    let url = gw.url(&format!(
        "/no-self?url={}",
        percent_encode("http://self/internal/hello/x")
    ));
    let (status, _, body) = get(&http1(), &url).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::BAD_GATEWAY,
            "outbound error: HttpRequestDenied\n"
        )
    );
}

#[tokio::test]
async fn self_calls_nest_and_stop_at_the_depth_limit() {
    let gw = Gateway::start(&routes());
    // Each level is a /public request fetching the next.
    let chain = |levels: usize| {
        let mut url = "http://self/internal/hello/deep".to_string();
        for _ in 0..levels {
            url = format!("http://self/public?url={}", percent_encode(&url));
        }
        gw.url(&format!("/public?url={}", percent_encode(&url)))
    };
    // 1 client request + 7 nested /public + the private hello: 8 self-calls, the limit.
    let (status, _, body) = get(&http1(), &chain(7)).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "Hello, deep!\n"));
    // One more level is refused inside the deepest guest, which reports it up the chain.
    let (status, _, body) = get(&http1(), &chain(8)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "outbound error: LoopDetected\n");
}
