//! Plugins through the real binary: `llm-usage` settles token and credit meters to what
//! OpenAI-, Anthropic- and Gemini-shaped answers report (JSON and SSE), and the debug plugins
//! (`deny-header`, `debug-fail`) prove the hook rules: the route's order, the first denial stops
//! the rest, and a plugin's error is a 500 problem body that charges nothing and leaves the
//! gateway serving.

use crate::common::http::read;
use std::time::Duration;

use crate::common::streamer::Streamer;
use crate::common::{refused_addr, Answer, Stack, ACME_KEY};
use crate::measured::settled;

const YAML: &str = r#"
server:
  listen: "{listen}"
admin:
  listen: "{admin}"
store:
  kind: redis
  url: "{redis}"
  timeout: 2s
upstreams:
  product:
    targets: ["{upstream}"]
  streamer:
    targets: ["{streamer}"]
tenants:
  acme:
    plan: free
    keys: [{ id: acme-1, sha256: "{acme_sha}" }]
plans:
  free:
    meters:
      requests: { limit: 100000, period: month }
      input_tokens: { limit: 10000000, period: month }
      output_tokens: { limit: 10000000, period: month }
      credits: { limit: 100000000, period: month }
plugins:
  llm-usage:
    weights:
      gpt-4.1: { input: 1, output: 4 }
      claude-sonnet-4-5: { input: 3, output: 15 }
      gemini-2.5-flash: { input: 0.5, output: 2.5 }
  deny-header: { header: x-deny, trace: true }
  debug-fail: { when_header: x-fail, {debug_fail}, trace: true }
routes:
  - name: ai
    match: { path_prefix: /ai/ }
    upstream: product
    plugins: [llm-usage]
    meter:
      requests: 1
      input_tokens: { from_response: "plugin:llm-usage", reserve: 1000 }
      output_tokens: { from_response: "plugin:llm-usage", reserve: 1000 }
      credits: { from_response: "plugin:llm-usage", reserve: 10000 }
  - name: ordered
    match: { path_prefix: /ordered }
    upstream: product
    plugins: [deny-header, debug-fail]
    meter: { requests: 1 }
  - name: reversed
    match: { path_prefix: /reversed }
    upstream: product
    plugins: [debug-fail, deny-header]
    meter: { requests: 1 }
  - name: reads-body
    match: { path_prefix: /reads-body }
    upstream: product
    plugins: [llm-usage]
  - name: stream
    match: { path_prefix: /stream }
    upstream: streamer
    plugins: [llm-usage]
    meter:
      input_tokens: { from_response: "plugin:llm-usage", reserve: 1000 }
      output_tokens: { from_response: "plugin:llm-usage", reserve: 1000 }
      credits: { from_response: "plugin:llm-usage", reserve: 10000 }
"#;

/// The stack, with `debug_fail` completing `debug-fail`'s settings (`at: request`, ...).
async fn stack(debug_fail: &str) -> Stack {
    stack_with(debug_fail, &refused_addr()).await
}

async fn stack_with(debug_fail: &str, streamer: &str) -> Stack {
    let yaml = YAML
        .replace("{debug_fail}", debug_fail)
        .replace("{streamer}", streamer);
    Stack::start(&yaml).await
}

/// `GET path` as acme, with each of `headers` set to `1`.
async fn call(stack: &Stack, path: &str, headers: &[&str]) -> Answer {
    let mut request = stack
        .client
        .get(stack.gateway.url(path))
        .bearer_auth(ACME_KEY);
    for h in headers {
        request = request.header(*h, "1");
    }
    read(request.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_provider_json_and_sse_settles_exact_tokens_and_credits() {
    let stack = stack("at: request").await;
    // (path, input, output, credits by the configured weights, rounded up)
    let cases = [
        ("/ai/openai/json/11/7", 11, 7, 11 + 7 * 4),
        ("/ai/openai/sse/20/30", 20, 30, 20 + 30 * 4),
        ("/ai/anthropic/json/25/15", 25, 15, 25 * 3 + 15 * 15),
        ("/ai/anthropic/sse/40/9", 40, 9, 40 * 3 + 9 * 15),
        ("/ai/gemini/json/8/5", 8, 5, 17),  // 4 + 12.5
        ("/ai/gemini/sse/3/10", 3, 10, 27), // 1.5 + 25
    ];
    let (mut input, mut output, mut credits) = (0, 0, 0);
    for (path, i, o, c) in cases {
        let answer = call(&stack, path, &[]).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert!(
            answer.body.contains("Hel"),
            "{path}: the body reaches the client whole"
        );
        (input, output, credits) = (input + i, output + o, credits + c);
        assert_eq!(
            settled(&stack, "input_tokens", input).await,
            input,
            "{path}"
        );
        assert_eq!(
            settled(&stack, "output_tokens", output).await,
            output,
            "{path}"
        );
        assert_eq!(settled(&stack, "credits", credits).await, credits, "{path}");
    }
    assert_eq!(stack.month_counter("acme", "requests").await, 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_run_in_route_order_and_the_first_denial_stops_the_rest() {
    let stack = stack("at: request").await;
    let trace = |a: &Answer| a.echoed_headers()["x-tollgate-plugin-trace"].clone();
    let ordered = call(&stack, "/ordered/a", &[]).await;
    assert_eq!(trace(&ordered), ["deny-header", "debug-fail"]);
    let reversed = call(&stack, "/reversed/a", &[]).await;
    assert_eq!(trace(&reversed), ["debug-fail", "deny-header"]);

    // Both triggers sent: whichever plugin comes first decides, and the other never runs.
    let denied = call(&stack, "/ordered/b", &["x-deny", "x-fail"]).await;
    let body = denied.problem(403);
    assert_eq!(body["type"], "urn:tollgate:plugin:deny-header");
    assert_eq!(body["plugin"], "deny-header");
    assert_eq!(body["instance"], "/ordered/b");

    let failed = call(&stack, "/reversed/b", &["x-deny", "x-fail"]).await;
    let body = failed.problem(500);
    assert_eq!(body["type"], "urn:tollgate:plugin-error");
    assert_eq!(body["plugin"], "debug-fail");
    assert!(
        !failed.body.contains("as configured"),
        "the plugin's error message stays in the log: {}",
        failed.body
    );

    // The gateway keeps serving; refused calls reached no upstream and charged nothing.
    assert_eq!(call(&stack, "/reversed/c", &[]).await.status, 200);
    assert_eq!(stack.upstream.hits(), 3);
    assert_eq!(settled(&stack, "requests", 3).await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_plugin_answers_500_and_the_gateway_keeps_serving() {
    let stack = stack("at: request, panic: true").await;
    for _ in 0..3 {
        let failed = call(&stack, "/ordered/a", &["x-fail"]).await;
        assert_eq!(failed.problem(500)["plugin"], "debug-fail");
        assert_eq!(call(&stack, "/ordered/b", &[]).await.status, 200);
    }
    assert_eq!(stack.upstream.hits(), 3);
    assert_eq!(settled(&stack, "requests", 3).await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_that_reads_bodies_gets_them_uncompressed() {
    let stack = stack("at: request").await;
    let echo = |path: &'static str| {
        let request = stack
            .client
            .get(stack.gateway.url(path))
            .bearer_auth(ACME_KEY);
        async move {
            let answer = read(
                request
                    .header("accept-encoding", "gzip")
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            answer.echoed_headers()
        }
    };
    assert!(!echo("/reads-body/x").await.contains_key("accept-encoding"));
    assert!(
        echo("/ordered/x").await.contains_key("accept-encoding"),
        "plugins that do not read bodies change nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_failing_on_the_response_head_answers_500_and_charges_nothing() {
    let stack = stack("at: response_headers").await;
    let failed = call(&stack, "/ordered/a", &["x-fail"]).await;
    assert_eq!(failed.problem(500)["plugin"], "debug-fail");
    assert_eq!(stack.upstream.hits(), 1, "the upstream had answered");
    assert_eq!(stack.month_counter("acme", "requests").await, 0);
    for _ in 0..3 {
        assert_eq!(call(&stack, "/ordered/b", &[]).await.status, 200);
    }
    assert_eq!(settled(&stack, "requests", 3).await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_answer_passes_undelayed_and_settles_exact_tokens() {
    // An Anthropic-shaped stream whose second part (cut inside an event) is held back by the
    // upstream until the client has the first: a gateway that waited for the whole body would
    // deliver nothing and time out here.
    let model = crate::common::providers::ANTHROPIC_MODEL;
    let first = vec![
        format!("event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"model\":\"{model}\",\"content\":[],\"usage\":{{\"input_tokens\":31,\"output_tokens\":1}}}}}}\n\n"),
        "event: content_block_delta\ndata: {\"type\":\"content_bl".to_string(),
    ];
    let rest = vec![
        "ock_delta\",\"delta\":{\"text\":\"Hello\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_to".to_string(),
        "kens\":17}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string(),
    ];
    let streamer = Streamer::start(first, rest).await;
    let stack = stack_with("at: request", &streamer.addr()).await;
    let mut response = stack
        .client
        .get(stack.gateway.url("/stream/v1/messages"))
        .bearer_auth(ACME_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut seen = String::new();
    while !seen.contains("message_start") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("the first part reaches the client while the rest is held back")
            .unwrap()
            .expect("the body goes on");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    streamer.release();
    while let Some(chunk) = response.chunk().await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.ends_with("{\"type\":\"message_stop\"}\n\n"), "{seen}");
    assert_eq!(settled(&stack, "input_tokens", 31).await, 31);
    assert_eq!(settled(&stack, "output_tokens", 17).await, 17);
    assert_eq!(
        settled(&stack, "credits", 31 * 3 + 17 * 15).await,
        31 * 3 + 17 * 15
    );
}
