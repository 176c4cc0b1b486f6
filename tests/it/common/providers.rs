//! AI-provider-shaped answers with known token counts, for the `llm-usage` plugin:
//! `/ai/<openai|anthropic|gemini>/<json|sse>/<input>/<output>`. Each answer names a model
//! (`gpt-4.1-2025-04-14`, `claude-sonnet-4-5-20250929`, `gemini-2.5-flash`), and each stream
//! repeats running totals before the final ones, the way the providers do.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};

/// The model each provider's answers name.
pub const OPENAI_MODEL: &str = "gpt-4.1-2025-04-14";
pub const ANTHROPIC_MODEL: &str = "claude-sonnet-4-5-20250929";
pub const GEMINI_MODEL: &str = "gemini-2.5-flash";

/// The answer for `path`, or `None` when it is not an `/ai/` path.
pub fn answer(path: &str) -> Option<Response<Full<Bytes>>> {
    let mut parts = path.strip_prefix("/ai/")?.split(['/', '?']);
    let (provider, format) = (parts.next()?, parts.next()?);
    let input: u64 = parts.next()?.parse().ok()?;
    let output: u64 = parts.next()?.parse().ok()?;
    let body = match (provider, format) {
        ("openai", "json") => openai_json(input, output),
        ("openai", "sse") => openai_sse(input, output),
        ("anthropic", "json") => anthropic_json(input, output),
        ("anthropic", "sse") => anthropic_sse(input, output),
        ("gemini", "json") => gemini_json(input, output),
        ("gemini", "sse") => gemini_sse(input, output),
        _ => return None,
    };
    let content_type = if format == "sse" {
        "text/event-stream"
    } else {
        "application/json"
    };
    Some(
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap(),
    )
}

fn openai_json(i: u64, o: u64) -> String {
    format!(
        r#"{{"id":"chatcmpl-1","object":"chat.completion","model":"{OPENAI_MODEL}","choices":[{{"index":0,"message":{{"role":"assistant","content":"Hello"}}}}],"usage":{{"prompt_tokens":{i},"completion_tokens":{o},"total_tokens":{}}}}}"#,
        i + o
    )
}

fn openai_sse(i: u64, o: u64) -> String {
    let chunk = |delta: &str, usage: &str| {
        format!("data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"{OPENAI_MODEL}\",\"choices\":[{delta}],\"usage\":{usage}}}\n\n")
    };
    [
        chunk(r#"{"index":0,"delta":{"content":"Hel"}}"#, "null"),
        chunk(r#"{"index":0,"delta":{"content":"lo"}}"#, "null"),
        chunk(
            "",
            &format!(
                r#"{{"prompt_tokens":{i},"completion_tokens":{o},"total_tokens":{}}}"#,
                i + o
            ),
        ),
        "data: [DONE]\n\n".to_string(),
    ]
    .concat()
}

fn anthropic_json(i: u64, o: u64) -> String {
    format!(
        r#"{{"id":"msg_1","type":"message","role":"assistant","model":"{ANTHROPIC_MODEL}","content":[{{"type":"text","text":"Hello"}}],"stop_reason":"end_turn","usage":{{"input_tokens":{i},"output_tokens":{o}}}}}"#
    )
}

fn anthropic_sse(i: u64, o: u64) -> String {
    format!(
        "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"{ANTHROPIC_MODEL}\",\"content\":[],\"usage\":{{\"input_tokens\":{i},\"output_tokens\":1}}}}}}\n\n\
         event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"Hello\"}}}}\n\n\
         event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\"}},\"usage\":{{\"output_tokens\":{o}}}}}\n\n\
         event: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n"
    )
}

fn gemini_json(i: u64, o: u64) -> String {
    format!(
        r#"{{"candidates":[{{"content":{{"parts":[{{"text":"Hello"}}],"role":"model"}}}}],"usageMetadata":{{"promptTokenCount":{i},"candidatesTokenCount":{o},"totalTokenCount":{}}},"modelVersion":"{GEMINI_MODEL}"}}"#,
        i + o
    )
}

fn gemini_sse(i: u64, o: u64) -> String {
    let chunk = |out: u64| {
        format!("data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"Hel\"}}]}}}}],\"usageMetadata\":{{\"promptTokenCount\":{i},\"candidatesTokenCount\":{out}}},\"modelVersion\":\"{GEMINI_MODEL}\"}}\r\n\r\n")
    };
    [chunk(o / 2), chunk(o)].concat()
}
