//! Step 8 for response-measured meters: read the amount a response reports (a JSON field, the
//! last server-sent event carrying it, or a header) while the body streams past, so the
//! reservation can be settled to it.
//!
//! Nothing is held back from the client: chunks are looked at, never delayed. Memory is bounded:
//! a JSON body is kept only up to [`MAX_BODY`] (past that the meter settles to its default and
//! says so in a metric); an event stream is read one event at a time.

use bytes::Bytes;
use http::HeaderMap;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use tollgate_plugin::sse::EventStream;

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
    /// `Some` for a `text/event-stream` answer: read one event at a time.
    events: Option<EventStream>,
    /// A JSON answer's body, up to [`MAX_BODY`].
    buf: Vec<u8>,
    overflow: bool,
}

impl ResponseMeter {
    /// Starts measuring a response, or `None` when the route has no measured meter. Meters a
    /// plugin measures (`plugin:<name>`) are the plugin host's, not read here.
    pub fn start(meters: &[RouteMeter], headers: &HeaderMap) -> Option<ResponseMeter> {
        let meters: Vec<(usize, Measure)> = meters
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.measure.clone().map(|x| (i, x)))
            .filter(|(_, m)| !matches!(m.source, MeasureSource::Plugin(_)))
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
                MeasureSource::Json(_) | MeasureSource::Plugin(_) => None,
            })
            .collect();
        let event_stream = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        Some(ResponseMeter {
            meters,
            found,
            events: event_stream.then(|| EventStream::new(MAX_BODY)),
            buf: Vec::new(),
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
        if !self.wants_body() {
            return;
        }
        let (meters, found) = (&self.meters, &mut self.found);
        match &mut self.events {
            Some(events) => events.feed(chunk, |data| sse_event(meters, found, data)),
            None if self.overflow => {}
            None if self.buf.len() + chunk.len() > MAX_BODY => {
                self.overflow = true;
                self.buf = Vec::new();
            }
            None => self.buf.extend_from_slice(chunk),
        }
    }

    /// The end of the body: the amount of every measured meter (its default when missing).
    pub fn finish(&mut self) -> Vec<Measured> {
        let (meters, found) = (&self.meters, &mut self.found);
        match &mut self.events {
            Some(events) => events.finish(|data| sse_event(meters, found, data)),
            None if !self.overflow && !self.buf.is_empty() => {
                let body = std::mem::take(&mut self.buf);
                take_from(meters, found, &body);
            }
            None => {}
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

/// An event's data: the last event that carries an amount wins.
fn sse_event(meters: &[(usize, Measure)], found: &mut [Option<u64>], data: &[u8]) {
    if data != b"[DONE]" {
        take_from(meters, found, data);
    }
}

fn take_from(meters: &[(usize, Measure)], found: &mut [Option<u64>], json: &[u8]) {
    for ((_, m), found) in meters.iter().zip(found.iter_mut()) {
        if let MeasureSource::Json(path) = &m.source {
            if let Some(n) = probe(json, path) {
                *found = Some(n);
            }
        }
    }
}

/// The number at a dotted path of a JSON document (array elements by index), or `None`.
///
/// Deserializes only along the path: every other value is skipped without being built, so
/// reading `usage.total_tokens` out of a long completion allocates nothing for the completion.
pub fn probe(json: &[u8], path: &[String]) -> Option<u64> {
    let mut de = serde_json::Deserializer::from_slice(json);
    PathSeed(path).deserialize(&mut de).ok().flatten()
}

struct PathSeed<'p>(&'p [String]);

impl<'de> DeserializeSeed<'de> for PathSeed<'_> {
    type Value = Option<u64>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PathSeed<'_> {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_u64<E>(self, v: u64) -> Result<Option<u64>, E> {
        Ok(self.0.is_empty().then_some(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Option<u64>, E> {
        Ok(self.0.is_empty().then(|| u64::try_from(v).ok()).flatten())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Option<u64>, E> {
        // A partial unit is still a unit used.
        Ok((self.0.is_empty() && v >= 0.0).then(|| v.ceil() as u64))
    }
    fn visit_str<E>(self, v: &str) -> Result<Option<u64>, E> {
        Ok(self.0.is_empty().then(|| number_str(v)).flatten())
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<u64>, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match self.0.split_first() {
                Some((head, rest)) if found.is_none() && *head == key => {
                    found = map.next_value_seed(PathSeed(rest))?
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<u64>, A::Error> {
        let wanted = self
            .0
            .split_first()
            .and_then(|(head, rest)| Some((head.parse::<usize>().ok()?, rest)));
        let mut found = None;
        let mut i = 0;
        loop {
            let more = match wanted {
                Some((n, rest)) if n == i => {
                    seq.next_element_seed(PathSeed(rest))?.map(|v| found = v)
                }
                _ => seq.next_element::<IgnoredAny>()?.map(|_| ()),
            };
            if more.is_none() {
                return Ok(found);
            }
            i += 1;
        }
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
