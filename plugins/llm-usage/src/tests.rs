#![allow(clippy::unwrap_used)]

use super::*;
use tollgate_plugin::http::{HeaderMap, HeaderValue, StatusCode};
use tollgate_plugin::ConfigValue;

fn plugin(weights: &[(&str, f64, f64)]) -> LlmUsage {
    LlmUsage {
        weights: weights
            .iter()
            .filter(|(m, _, _)| *m != "*")
            .map(|(m, i, o)| {
                (
                    m.to_string(),
                    Weight {
                        input: *i,
                        output: *o,
                    },
                )
            })
            .collect(),
        fallback: weights
            .iter()
            .find(|(m, _, _)| *m == "*")
            .map(|(_, i, o)| Weight {
                input: *i,
                output: *o,
            }),
    }
}

/// Runs one answer through the hooks, cut into chunks at every `split` bytes.
fn run(p: &LlmUsage, content_type: &str, body: &str, split: usize) -> Measurements {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_str(content_type).unwrap());
    let mut call = Reading::default();
    p.on_response_headers(&mut call, &Response::new(StatusCode::OK, &headers))
        .unwrap();
    let mut meters = Measurements::default();
    for chunk in body.as_bytes().chunks(split.max(1)) {
        p.on_response_body(&mut call, chunk, false, &mut meters)
            .unwrap();
    }
    p.on_response_body(&mut call, b"", true, &mut meters)
        .unwrap();
    meters
}

fn tokens(m: &Measurements) -> (Option<u64>, Option<u64>, Option<u64>) {
    (m.get(INPUT_TOKENS), m.get(OUTPUT_TOKENS), m.get(CREDITS))
}

const OPENAI_JSON: &str = r#"{"id":"c","model":"gpt-4.1-2025-04-14","choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}"#;
const OPENAI_SSE: &str = "data: {\"model\":\"gpt-4.1\",\"choices\":[{\"delta\":{\"content\":\"h\"}}],\"usage\":null}\n\ndata: {\"model\":\"gpt-4.1\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":7}}\n\ndata: [DONE]\n\n";
const RESPONSES_SSE: &str = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"model\":\"gpt-4.1\",\"usage\":null}}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-4.1\",\"usage\":{\"input_tokens\":5,\"output_tokens\":9}}}\n\n";
const ANTHROPIC_JSON: &str = r#"{"id":"msg_1","type":"message","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":25,"output_tokens":15}}"#;
const ANTHROPIC_SSE: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
const GEMINI_JSON: &str = r#"{"candidates":[{"content":{"parts":[{"text":"hi"}]}}],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":3,"thoughtsTokenCount":2,"totalTokenCount":13},"modelVersion":"gemini-2.5-flash"}"#;
const GEMINI_SSE: &str = "data: {\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":1},\"modelVersion\":\"gemini-2.5-flash\"}\r\n\r\ndata: {\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":8,\"candidatesTokenCount\":5},\"modelVersion\":\"gemini-2.5-flash\"}\r\n\r\n";

#[test]
fn every_shape_in_every_chunking() {
    let p = plugin(&[]);
    let cases = [
        ("application/json", OPENAI_JSON, (11, 7)),
        ("text/event-stream", OPENAI_SSE, (11, 7)),
        ("text/event-stream", RESPONSES_SSE, (5, 9)),
        ("application/json", ANTHROPIC_JSON, (25, 15)),
        ("text/event-stream; charset=utf-8", ANTHROPIC_SSE, (25, 15)),
        ("application/json; charset=utf-8", GEMINI_JSON, (8, 5)),
        ("text/event-stream", GEMINI_SSE, (8, 5)),
    ];
    for (ct, body, (input, output)) in cases {
        for split in [1, 3, 7, 64, body.len()] {
            let m = run(&p, ct, body, split);
            assert_eq!(
                tokens(&m),
                (Some(input), Some(output), None),
                "{body} split {split}"
            );
        }
    }
}

#[test]
fn weights_by_model_snapshot_and_fallback() {
    let p = plugin(&[("gpt-4.1", 1.0, 4.0), ("claude-sonnet-4-5", 3.0, 15.0)]);
    assert_eq!(
        tokens(&run(&p, "application/json", OPENAI_JSON, 9)).2,
        Some(11 + 28)
    );
    assert_eq!(
        tokens(&run(&p, "text/event-stream", ANTHROPIC_SSE, 9)).2,
        Some(75 + 225)
    );
    assert_eq!(tokens(&run(&p, "application/json", GEMINI_JSON, 9)).2, None);
    let mini = OPENAI_JSON.replace("gpt-4.1-2025-04-14", "gpt-4.1-mini");
    assert_eq!(tokens(&run(&p, "application/json", &mini, 9)).2, None);
    let p = plugin(&[("*", 0.5, 0.25)]);
    assert_eq!(
        tokens(&run(&p, "application/json", GEMINI_JSON, 9)).2,
        Some(6)
    );
}

#[test]
fn nothing_is_reported_without_usage_or_for_other_bodies() {
    let p = plugin(&[("*", 1.0, 1.0)]);
    let m = run(
        &p,
        "application/json",
        r#"{"error":{"message":"bad"},"message":"x"}"#,
        4,
    );
    assert_eq!(tokens(&m), (None, None, None));
    let m = run(&p, "text/plain", OPENAI_JSON, 4);
    assert_eq!(tokens(&m), (None, None, None));
    let gemini_array = format!("[{GEMINI_JSON},{GEMINI_JSON}]");
    let m = run(&p, "application/json", &gemini_array, 5);
    assert_eq!(tokens(&m), (Some(8), Some(5), Some(13)));
}

#[test]
fn config_is_checked_with_positions() {
    let key = |l, s: &str| ConfigNode::new(l, 5, ConfigValue::Str(s.into()));
    let weight = ConfigNode::new(
        3,
        14,
        ConfigValue::Map(vec![
            (
                key(3, "input"),
                ConfigNode::new(3, 21, ConfigValue::Int(-1)),
            ),
            (key(3, "ouput"), ConfigNode::new(3, 33, ConfigValue::Int(4))),
        ]),
    );
    let weights = ConfigNode::new(2, 5, ConfigValue::Map(vec![(key(3, "gpt-4.1"), weight)]));
    let config = ConfigNode::new(1, 1, ConfigValue::Map(vec![(key(2, "weights"), weights)]));
    let errors: Vec<String> = LlmUsage::from_config(&config)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "3:5: unknown key `ouput` in the weight of model `gpt-4.1`; expected one of: input, output",
            "3:21: `input` must be a number of at least 0, found -1",
            "3:14: the weight of model `gpt-4.1` is missing `output`",
        ]
    );
    assert!(LlmUsage::from_config(&ConfigNode::new(1, 1, ConfigValue::Null)).is_ok());
}
