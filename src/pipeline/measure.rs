//! Step 8 for response-measured meters: read the amount a response reports (a JSON field, the
//! last server-sent event carrying it, or a header) while the body streams past, so the
//! reservation can be settled to it.
//!
//! Nothing is held back from the client: chunks are looked at, never delayed. Memory is bounded:
//! a JSON body is kept only up to [`MAX_BODY`] (past that the meter settles to its default and
//! says so in a metric); an event stream is read one event at a time.

use bytes::Bytes;
use http::HeaderMap;
use serde_json::Value;

use crate::config::{Measure, MeasureSource, RouteMeter};

/// The most of a JSON body kept for measuring (and the most of one server-sent event).
pub const MAX_BODY: usize = 1 << 20;

/// One measured meter's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// Index of the meter in the route's `meter` list.
    pub index: usize,
    /// Units to settle to.
    pub units: u64,
    /// The response did not carry the amount; `units` is the configured default.
    pub defaulted: bool,
}

/// Reads a response for the route's measured meters.
pub struct ResponseMeter {
    meters: Vec<(usize, Measure)>,
    found: Vec<Option<u64>>,
    event_stream: bool,
    buf: Vec<u8>,
    /// SSE: the `data:` lines of the event being read.
    event: Vec<u8>,
    overflow: bool,
}

impl ResponseMeter {
    /// Starts measuring a response, or `None` when the route has no measured meter.
    pub fn start(meters: &[RouteMeter], headers: &HeaderMap) -> Option<ResponseMeter> {
        let meters: Vec<(usize, Measure)> = meters
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.measure.clone().map(|x| (i, x)))
            .collect();
        if meters.is_empty() {
            return None;
        }
        let found = meters
            .iter()
            .map(|(_, m)| match &m.source {
                MeasureSource::Header(name) => headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(number_str),
                MeasureSource::Json(_) => None,
            })
            .collect();
        let event_stream = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        Some(ResponseMeter {
            meters,
            found,
            event_stream,
            buf: Vec::new(),
            event: Vec::new(),
            overflow: false,
        })
    }

    fn wants_body(&self) -> bool {
        self.meters
            .iter()
            .any(|(_, m)| matches!(m.source, MeasureSource::Json(_)))
    }

    /// Looks at one chunk of the body.
    pub fn feed(&mut self, chunk: &Bytes) {
        if !self.wants_body() || self.overflow && !self.event_stream {
            return;
        }
        if !self.event_stream {
            if self.buf.len() + chunk.len() > MAX_BODY {
                self.overflow = true;
                self.buf = Vec::new();
            } else {
                self.buf.extend_from_slice(chunk);
            }
            return;
        }
        for &b in chunk.iter() {
            if b != b'\n' {
                if self.buf.len() < MAX_BODY {
                    self.buf.push(b);
                }
                continue;
            }
            let line = std::mem::take(&mut self.buf);
            self.sse_line(&line);
        }
    }

    /// One line of an event stream: `data:` lines gather; a blank line ends the event.
    fn sse_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            let data = std::mem::take(&mut self.event);
            self.sse_event(&data);
        } else if let Some(data) = line.strip_prefix(b"data:") {
            let data = data.strip_prefix(b" ").unwrap_or(data);
            if self.event.len() + data.len() < MAX_BODY {
                if !self.event.is_empty() {
                    self.event.push(b'\n');
                }
                self.event.extend_from_slice(data);
            }
        }
    }

    /// An event's data: the last event that carries an amount wins.
    fn sse_event(&mut self, data: &[u8]) {
        if data.is_empty() || data == b"[DONE]" {
            return;
        }
        let Ok(json) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        self.take_from(&json);
    }

    fn take_from(&mut self, json: &Value) {
        for ((_, m), found) in self.meters.iter().zip(self.found.iter_mut()) {
            if let MeasureSource::Json(path) = &m.source {
                if let Some(n) = lookup(json, path) {
                    *found = Some(n);
                }
            }
        }
    }

    /// The end of the body: the amount of every measured meter (its default when missing).
    pub fn finish(&mut self) -> Vec<Measured> {
        if self.event_stream {
            if !self.buf.is_empty() {
                let line = std::mem::take(&mut self.buf);
                self.sse_line(&line);
            }
            let data = std::mem::take(&mut self.event);
            self.sse_event(&data);
        } else if self.wants_body() && !self.overflow && !self.buf.is_empty() {
            if let Ok(json) = serde_json::from_slice::<Value>(&self.buf) {
                self.take_from(&json);
            }
        }
        self.meters
            .iter()
            .zip(&self.found)
            .map(|((index, m), found)| Measured {
                index: *index,
                units: found.unwrap_or(m.default),
                defaulted: found.is_none(),
            })
            .collect()
    }
}

/// The number at a dotted path; array elements by index. Non-negative numbers only; fractions
/// are rounded up (a partial unit is still a unit used).
fn lookup(json: &Value, path: &[String]) -> Option<u64> {
    let mut v = json;
    for part in path {
        v = match v {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f.ceil() as u64)),
        Value::String(s) => number_str(s),
        _ => None,
    }
}

fn number_str(s: &str) -> Option<u64> {
    s.trim().parse::<u64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU64;

    fn meter(source: MeasureSource, default: u64) -> RouteMeter {
        RouteMeter {
            name: "tokens".into(),
            reserve: NonZeroU64::new(100).unwrap(),
            measure: Some(Measure { source, default }),
        }
    }

    fn json_path(p: &str) -> MeasureSource {
        MeasureSource::Json(p.split('.').map(str::to_string).collect())
    }

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", content_type.parse().unwrap());
        h
    }

    fn run(meters: &[RouteMeter], h: &HeaderMap, chunks: &[&str]) -> Vec<Measured> {
        let mut m = ResponseMeter::start(meters, h).unwrap();
        for c in chunks {
            m.feed(&Bytes::copy_from_slice(c.as_bytes()));
        }
        m.finish()
    }

    #[test]
    fn json_body_in_pieces() {
        let got = run(
            &[meter(json_path("usage.total_tokens"), 7)],
            &headers("application/json"),
            &["{\"usage\":{\"total_", "tokens\": 42}}"],
        );
        assert_eq!(
            got,
            vec![Measured {
                index: 0,
                units: 42,
                defaulted: false
            }]
        );
    }

    #[test]
    fn missing_value_settles_to_the_default() {
        let got = run(
            &[meter(json_path("usage.total_tokens"), 7)],
            &headers("application/json"),
            &["{\"id\":1}"],
        );
        assert_eq!(
            got,
            vec![Measured {
                index: 0,
                units: 7,
                defaulted: true
            }]
        );
    }

    #[test]
    fn event_stream_takes_the_last_event_that_carries_the_value() {
        let body = [
            "data: {\"choices\":[],\"usage\":null}\n\n",
            "data: {\"usage\":{\"total_to",
            "kens\":5}}\n\ndata: {\"usage\":{\"total_tokens\":12}}\r\n\r\n",
            "data: [DONE]\n\n",
        ];
        let got = run(
            &[meter(json_path("usage.total_tokens"), 0)],
            &headers("text/event-stream; charset=utf-8"),
            &body,
        );
        assert_eq!(got[0].units, 12);
    }

    #[test]
    fn header_and_array_paths() {
        let mut h = headers("application/json");
        h.insert("x-units", "9".parse().unwrap());
        let meters = [
            meter(MeasureSource::Header("x-units".parse().unwrap()), 0),
            meter(json_path("items.1.n"), 0),
        ];
        let got = run(&meters, &h, &["{\"items\":[{\"n\":1},{\"n\":2.5}]}"]);
        assert_eq!((got[0].units, got[1].units), (9, 3));
    }
}
