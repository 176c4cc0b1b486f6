#![forbid(unsafe_code)]
//! `llm-usage`: meters AI API traffic by the token counts the provider's answer reports.
//!
//! It reads OpenAI-shaped (`usage.prompt_tokens` / `completion_tokens`, and the Responses API's
//! `input_tokens` / `output_tokens`, also inside `response.completed` events), Anthropic-shaped
//! (`usage.input_tokens` / `output_tokens`; streamed as `message_start` then `message_delta`
//! events) and Gemini-shaped (`usageMetadata.promptTokenCount` / `candidatesTokenCount`, plus
//! `thoughtsTokenCount`, which Gemini bills as output) answers, JSON or server-sent events,
//! and reports the meters `input_tokens`, `output_tokens` and, when `weights` are configured,
//! `credits` = ⌈input × w.input + output × w.output⌉ for the answer's model.
//!
//! Every provider repeats a running total in its streamed usage, so the last value seen for a
//! field wins; a field no event carries is not reported, and the route's meter then settles to
//! its `default`. Streams are read one event at a time and JSON bodies are kept only up to
//! [`MAX_BODY`]: chunks are looked at as they pass, never held back.
//!
//! ```yaml
//! plugins:
//!   llm-usage:
//!     weights:                     # optional; model → credits per token
//!       gpt-4.1: { input: 1, output: 4 }
//!       "*": { input: 1, output: 1 }   # any other model
//! ```
//!
//! A weight applies to its exact model name and to dated or versioned snapshots of it (the
//! name followed by `-` and a digit: `gpt-4.1` covers `gpt-4.1-2025-04-14` but not
//! `gpt-4.1-mini`), so a cheaper sibling model never inherits a price by accident.

use serde::Deserialize;
use tollgate_plugin::serde_json::json;
use tollgate_plugin::sse::EventStream;
use tollgate_plugin::{
    ConfigError, ConfigNode, EventData, Measurements, Plugin, PluginError, Response,
};

/// The most of a JSON body (and of one streamed event) kept for reading usage.
pub const MAX_BODY: usize = 1 << 20;

/// Meter names this plugin reports.
pub const INPUT_TOKENS: &str = "input_tokens";
/// See [`INPUT_TOKENS`].
pub const OUTPUT_TOKENS: &str = "output_tokens";
/// See [`INPUT_TOKENS`].
pub const CREDITS: &str = "credits";

/// The plugin: its weights, by model.
#[derive(Debug, Default)]
pub struct LlmUsage {
    weights: Vec<(String, Weight)>,
    fallback: Option<Weight>,
}

/// Credits per input and per output token.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Weight {
    input: f64,
    output: f64,
}

/// One call's reading of its answer.
#[derive(Debug, Default)]
pub struct Reading {
    body: Body,
    usage: Usage,
}

/// What the answer said so far.
#[derive(Debug, Default)]
struct Usage {
    input: Option<u64>,
    output: Option<u64>,
    model: Option<String>,
}

#[derive(Debug, Default)]
enum Body {
    /// Not an answer to read (no usage expected), or given up on (too large).
    #[default]
    Skip,
    Json(Vec<u8>),
    Events(EventStream),
}

// === impl LlmUsage ===

impl Plugin for LlmUsage {
    const NAME: &'static str = "llm-usage";
    type Call = Reading;

    fn from_config(config: &ConfigNode) -> Result<Self, Vec<ConfigError>> {
        let what = "`llm-usage`";
        let mut errors = config.unknown_keys(what, &["weights"]);
        let mut out = LlmUsage::default();
        let Some(weights) = config.get("weights") else {
            return if errors.is_empty() {
                Ok(out)
            } else {
                Err(errors)
            };
        };
        match weights.entries("`weights`") {
            Ok(entries) => {
                for (model, _, w) in entries {
                    match weight(w, model) {
                        Ok(w) if model == "*" => out.fallback = Some(w),
                        Ok(w) => out.weights.push((model.to_string(), w)),
                        Err(mut e) => errors.append(&mut e),
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    fn reads_body(&self) -> bool {
        true
    }

    fn on_response_headers(
        &self,
        call: &mut Reading,
        response: &Response<'_>,
    ) -> Result<(), PluginError> {
        let content_type = response
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim_start()
            .to_ascii_lowercase();
        call.body = if content_type.starts_with("text/event-stream") {
            Body::Events(EventStream::new(MAX_BODY))
        } else if content_type.is_empty() || content_type.contains("json") {
            Body::Json(Vec::new())
        } else {
            Body::Skip
        };
        Ok(())
    }

    fn on_response_body(
        &self,
        call: &mut Reading,
        chunk: &[u8],
        end_of_stream: bool,
        meters: &mut Measurements,
    ) -> Result<(), PluginError> {
        call.feed(chunk, end_of_stream);
        if end_of_stream {
            self.report(call, meters);
        }
        Ok(())
    }

    /// Adds `llm: {model, input_tokens, output_tokens}` to the usage event, so a consumer sees
    /// which model a call's tokens were counted for.
    fn on_event(&self, call: &Reading, data: &mut EventData) -> Result<(), PluginError> {
        if call.usage.input.is_some() || call.usage.output.is_some() || call.usage.model.is_some() {
            data.insert(
                "llm".into(),
                json!({ "model": call.usage.model, "input_tokens": call.usage.input, "output_tokens": call.usage.output }),
            );
        }
        Ok(())
    }
}

impl LlmUsage {
    /// The weight of `model`: its own, a snapshot's base model's, else `"*"`.
    fn weight(&self, model: Option<&str>) -> Option<Weight> {
        let found = model.and_then(|m| {
            self.weights.iter().find(|(name, _)| {
                m == name
                    || m.strip_prefix(name.as_str())
                        .and_then(|rest| rest.strip_prefix('-'))
                        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
        });
        found.map(|(_, w)| *w).or(self.fallback)
    }

    fn report(&self, call: &Reading, meters: &mut Measurements) {
        if let Some(n) = call.usage.input {
            meters.set(INPUT_TOKENS, n);
        }
        if let Some(n) = call.usage.output {
            meters.set(OUTPUT_TOKENS, n);
        }
        if call.usage.input.is_none() && call.usage.output.is_none() {
            return;
        }
        if let Some(w) = self.weight(call.usage.model.as_deref()) {
            let credits = call.usage.input.unwrap_or(0) as f64 * w.input
                + call.usage.output.unwrap_or(0) as f64 * w.output;
            // A partial credit is still a credit used; `as` saturates on overflow.
            meters.set(CREDITS, credits.ceil() as u64);
        }
    }
}

/// `{ input: 1, output: 4 }`
fn weight(n: &ConfigNode, model: &str) -> Result<Weight, Vec<ConfigError>> {
    let what = format!("the weight of model `{model}`");
    let mut errors = n.unknown_keys(&what, &["input", "output"]);
    let mut side = |key: &str| match n.get(key) {
        Some(v) => v
            .non_negative(&format!("`{key}`"))
            .map_err(|e| errors.push(e))
            .ok(),
        None => {
            errors.push(n.error(format!("{what} is missing `{key}`")));
            None
        }
    };
    let (input, output) = (side("input"), side("output"));
    match (input, output) {
        (Some(input), Some(output)) if errors.is_empty() => Ok(Weight { input, output }),
        _ => Err(errors),
    }
}

// === impl Reading ===

impl Reading {
    /// Reads one chunk; documents are read as they complete, without copying them.
    fn feed(&mut self, chunk: &[u8], end: bool) {
        let usage = &mut self.usage;
        match &mut self.body {
            Body::Skip => {}
            Body::Json(buf) if buf.len() + chunk.len() > MAX_BODY => self.body = Body::Skip,
            Body::Json(buf) => {
                buf.extend_from_slice(chunk);
                if end {
                    usage.read(&std::mem::take(buf));
                }
            }
            Body::Events(stream) => {
                let mut on_event = |data: &[u8]| {
                    // Most events of a stream are content deltas: only those that mention
                    // usage (`usage`, `usageMetadata`) are worth parsing. Every provider puts
                    // the model in those events too.
                    if data != b"[DONE]" && data.windows(4).any(|w| w == b"sage") {
                        usage.read(data);
                    }
                };
                stream.feed(chunk, &mut on_event);
                if end {
                    stream.finish(&mut on_event);
                }
            }
        }
    }
}

// === impl Usage ===

impl Usage {
    /// One JSON document: a body, a streamed event, or (Gemini without `alt=sse`) an array.
    fn read(&mut self, json: &[u8]) {
        if json.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            if let Ok(docs) = serde_json::from_slice::<Vec<Doc>>(json) {
                docs.into_iter().for_each(|d| self.take(d));
            }
        } else if let Ok(doc) = serde_json::from_slice::<Doc>(json) {
            self.take(doc);
        }
    }
    /// Keeps the latest value of every field the document carries.
    fn take(&mut self, doc: Doc) {
        let nested = [doc.message, doc.response]
            .into_iter()
            .flatten()
            .filter_map(Lenient::ok);
        let mut models = vec![doc.model, doc.model_version];
        let mut usages = vec![doc.usage];
        for n in nested {
            models.push(n.model);
            usages.push(n.usage);
        }
        for u in usages.into_iter().flatten() {
            if let Some(n) = u.prompt_tokens.or(u.input_tokens) {
                self.input = Some(n);
            }
            if let Some(n) = u.completion_tokens.or(u.output_tokens) {
                self.output = Some(n);
            }
        }
        if let Some(g) = doc.usage_metadata {
            if let Some(n) = g.prompt_token_count {
                self.input = Some(n);
            }
            if g.candidates_token_count.is_some() || g.thoughts_token_count.is_some() {
                let out = g.candidates_token_count.unwrap_or(0);
                self.output = Some(out.saturating_add(g.thoughts_token_count.unwrap_or(0)));
            }
        }
        if let Some(m) = models.into_iter().flatten().rfind(|m| !m.is_empty()) {
            self.model = Some(m);
        }
    }
}

// === the shapes read ===

/// The fields of an answer (or streamed event) that carry usage and the model. Everything else
/// is skipped by serde without being built.
#[derive(Debug, Deserialize)]
struct Doc {
    #[serde(default)]
    model: Option<String>,
    #[serde(default, rename = "modelVersion")]
    model_version: Option<String>,
    #[serde(default)]
    usage: Option<TokenUsage>,
    #[serde(default, rename = "usageMetadata")]
    usage_metadata: Option<GeminiUsage>,
    /// Anthropic's `message_start` event.
    #[serde(default)]
    message: Option<Lenient<Nested>>,
    /// OpenAI Responses API stream events (`response.completed`).
    #[serde(default)]
    response: Option<Lenient<Nested>>,
}

#[derive(Debug, Deserialize)]
struct Nested {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    usage: Option<TokenUsage>,
}

/// `message` and `response` mean other things in other APIs (an error's text, say): a value of
/// another shape is skipped instead of spoiling the whole document.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Lenient<T> {
    Ok(T),
    Other(serde::de::IgnoredAny),
}

impl<T> Lenient<T> {
    fn ok(self) -> Option<T> {
        match self {
            Lenient::Ok(t) => Some(t),
            Lenient::Other(_) => None,
        }
    }
}

#[derive(Debug, Deserialize)]
struct TokenUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiUsage {
    #[serde(default)]
    prompt_token_count: Option<u64>,
    #[serde(default)]
    candidates_token_count: Option<u64>,
    #[serde(default)]
    thoughts_token_count: Option<u64>,
}

#[cfg(test)]
mod tests;
