//! Signed webhooks (`onboarding.webhooks`, SPEC §2, §6): chosen milestones are POSTed one by
//! one, each verified here by an independent Standard Webhooks implementation (the
//! `standardwebhooks` crate); a receiver that fails keeps being retried through the spool with
//! the same `webhook-id`; broken webhook configs are refused at their position.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::events::{metric, metrics, wait_for};
use crate::common::receiver::{serve, serve_tls};
use crate::common::tls::TestCa;
use crate::common::{get, render, run_check, Gateway, RedisServer, Upstream, ACME_KEY};

const TOKEN: &str = "an-admin-token-for-the-tests";
const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// The milestones test's gateway (`acme` on `tiny`: 50 requests a month, warned at 40,
/// activated at 45), with one webhook to `{hook}` for the milestones in `{events}`.
fn yaml(redis: &str, upstream: &str, hook: &str, events: &str) -> String {
    let base = render(crate::milestones::YAML, redis, upstream).replace("{events}", redis);
    format!("{base}  webhooks:\n    - url: \"{hook}\"\n      events: {events}\n      secret: \"{SECRET}\"\n")
}

/// One POST the receiver got.
struct Attempt {
    /// `webhook-id`.
    id: String,
    /// `data.milestone` of the body.
    milestone: String,
    /// The body's CloudEvents `id`.
    event_id: String,
    /// What the independent verifier said.
    verified: Result<(), String>,
    /// What the receiver answered (0: nothing, it hung).
    status: u16,
    /// When it arrived.
    at: std::time::Instant,
}

/// What a webhook receiver saw; it answers 500 to its first `fail_next` POSTs, does not
/// answer its first `hang_next` at all, and answers 400 to every POST of `refuse`.
#[derive(Default)]
struct Hooks {
    attempts: Vec<Attempt>,
    fail_next: usize,
    hang_next: usize,
    refuse: Option<&'static str>,
}

impl Hooks {
    /// Accepted POSTs per milestone, each with its distinct `webhook-id`s.
    fn accepted(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for a in self.attempts.iter().filter(|a| a.status == 200) {
            out.entry(a.milestone.clone())
                .or_default()
                .push(a.id.clone());
        }
        out
    }
}

async fn receive(
    hooks: Arc<Mutex<Hooks>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let headers = req.headers().clone();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let verified = standardwebhooks::Webhook::new(SECRET)
        .unwrap()
        .verify(&body, &headers)
        .map_err(|e| e.to_string());
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(headers["content-type"], "application/json");
    let hang = {
        let mut hooks = hooks.lock().unwrap();
        let hang = hooks.hang_next > 0;
        if hang {
            hooks.hang_next -= 1;
            hooks.attempts.push(Attempt {
                id: headers["webhook-id"].to_str().unwrap().to_string(),
                milestone: event["data"]["milestone"].as_str().unwrap().to_string(),
                event_id: event["id"].as_str().unwrap().to_string(),
                verified: verified.clone(),
                status: 0,
                at: std::time::Instant::now(),
            });
        }
        hang
    };
    if hang {
        // Longer than the test waits: only the webhook's own timeout ends this attempt.
        tokio::time::sleep(Duration::from_secs(60)).await;
        return Ok(Response::new(Full::new(Bytes::new())));
    }
    let mut hooks = hooks.lock().unwrap();
    let milestone = event["data"]["milestone"].as_str().unwrap();
    let status = if verified.is_err() || hooks.refuse == Some(milestone) {
        StatusCode::BAD_REQUEST
    } else if hooks.fail_next > 0 {
        hooks.fail_next -= 1;
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    hooks.attempts.push(Attempt {
        id: headers["webhook-id"].to_str().unwrap().to_string(),
        milestone: event["data"]["milestone"].as_str().unwrap().to_string(),
        event_id: event["id"].as_str().unwrap().to_string(),
        verified,
        status: status.as_u16(),
        at: std::time::Instant::now(),
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    Ok(response)
}

/// A receiver, and a gateway posting `events` to it.
struct Setup {
    hooks: Arc<Mutex<Hooks>>,
    url: String,
    /// The config template the gateway runs with.
    yaml: String,
    gateway: Gateway,
    client: reqwest::Client,
    _receiver: tokio::task::JoinHandle<()>,
    _redis: RedisServer,
    _upstream: Upstream,
}

impl Setup {
    async fn start(events: &str, fail_first: usize) -> Setup {
        Setup::start_with(events, fail_first, 0, "").await
    }

    /// `start` with an HTTPS receiver presenting `tls`, and `extra` keys for the webhook.
    async fn start_tls(events: &str, tls: Arc<rustls::ServerConfig>, extra: &str) -> Setup {
        Setup::start_on(events, 0, 0, extra, Some(tls)).await
    }

    /// `start`, with a receiver that does not answer its first `hang_first` POSTs, and
    /// `extra` keys (indented lines) added to the webhook.
    async fn start_with(events: &str, fail_first: usize, hang_first: usize, extra: &str) -> Setup {
        Setup::start_on(events, fail_first, hang_first, extra, None).await
    }

    async fn start_on(
        events: &str,
        fail_first: usize,
        hang_first: usize,
        extra: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Setup {
        let hooks = Arc::new(Mutex::new(Hooks {
            fail_next: fail_first,
            hang_next: hang_first,
            ..Hooks::default()
        }));
        let (scheme, (addr, receiver)) = match tls {
            Some(tls) => ("https", serve_tls(hooks.clone(), receive, tls).await),
            None => ("http", serve(hooks.clone(), receive).await),
        };
        let url = format!("{scheme}://{addr}/hooks/tollgate");
        let redis = RedisServer::start().await;
        let upstream = Upstream::start().await;
        let yaml = yaml(&redis.url(), &upstream.addr(), &url, events) + extra;
        Setup {
            hooks,
            url,
            gateway: Gateway::start(&yaml).await,
            yaml,
            client: crate::common::client(),
            _receiver: receiver,
            _redis: redis,
            _upstream: upstream,
        }
    }

    /// An admin-API call that must answer 200; its JSON answer (`null` when empty).
    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut request = self
            .client
            .request(method, self.gateway.admin_url(path))
            .bearer_auth(TOKEN);
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let text = response.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// 52 calls: `first_call` on the first, `limit_warning` on the 40th, `activated` on the
    /// 45th, `limit_reached` on the 51st (the first 402).
    async fn calls(&self) {
        for i in 1..=52 {
            let r = get(&self.client, &self.gateway.url("/v1/items"), Some(ACME_KEY)).await;
            assert_eq!(r.status, if i <= 50 { 200 } else { 402 }, "call {i}");
        }
    }

    async fn wait_for_accepted(&self, milestones: &[&str]) {
        wait_for(
            &format!("{milestones:?} accepted"),
            Duration::from_secs(15),
            || async {
                let accepted = self.hooks.lock().unwrap().accepted();
                milestones.iter().all(|m| accepted.contains_key(*m))
            },
        )
        .await;
        // Anything further (a duplicate, an unchosen milestone) would have come by now.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }

    /// The webhook's sink name: `webhook-` and 8 hex digits of the SHA-256 of its URL.
    fn sink(&self) -> String {
        let digest = Sha256::digest(self.url.as_bytes());
        format!("webhook-{}", hex::encode(&digest[..4]))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chosen_milestones_arrive_once_each_signed_per_standard_webhooks() {
    let s = Setup::start("[first_call, activated, limit_reached, plan_changed]", 0).await;
    s.calls().await;
    s.admin(
        reqwest::Method::PUT,
        "/admin/v1/tenants/acme/plan",
        json!({ "plan": "pro" }),
    )
    .await;
    s.wait_for_accepted(&["first_call", "activated", "limit_reached", "plan_changed"])
        .await;

    let hooks = s.hooks.lock().unwrap();
    for a in &hooks.attempts {
        assert_eq!(a.verified, Ok(()), "{} ({})", a.id, a.milestone);
        assert_eq!(a.id, a.event_id, "webhook-id is the CloudEvents id");
    }
    let accepted = hooks.accepted();
    let milestones: Vec<&str> = accepted.keys().map(String::as_str).collect();
    assert_eq!(
        milestones,
        ["activated", "first_call", "limit_reached", "plan_changed"],
        "limit_warning fired but is not chosen"
    );
    for (milestone, ids) in &accepted {
        assert_eq!(ids.len(), 1, "{milestone} posted once: {ids:?}");
    }
    assert_eq!(hooks.attempts.len(), 4, "no other POSTs");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_receiver_gets_every_milestone_again_with_the_same_id() {
    let s = Setup::start("[first_call, limit_warning, limit_reached]", 4).await;
    s.calls().await;
    s.wait_for_accepted(&["first_call", "limit_warning", "limit_reached"])
        .await;

    same_id_on_every_attempt(&s.hooks.lock().unwrap());

    let text = metrics(&s.gateway).await;
    let sink = s.sink();
    let count = |result| {
        metric(
            &text,
            "tollgate_events_total",
            &[("sink", sink.as_str()), ("result", result)],
        )
    };
    assert!(
        count("failed") > 0.0,
        "failures counted for {sink}:\n{text}"
    );
    assert!(
        count("delivered") > 0.0,
        "deliveries counted for {sink}:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_does_not_answer_is_given_up_on_after_the_webhook_timeout() {
    let s = Setup::start_with("[first_call]", 0, 1, "      timeout: 300ms\n").await;
    let r = get(&s.client, &s.gateway.url("/v1/items"), Some(ACME_KEY)).await;
    assert_eq!(r.status, 200);
    s.wait_for_accepted(&["first_call"]).await;

    {
        let hooks = s.hooks.lock().unwrap();
        let [hung, accepted] = &hooks.attempts[..] else {
            panic!(
                "one unanswered POST, then one accepted: {} attempts",
                hooks.attempts.len()
            );
        };
        assert_eq!((hung.status, accepted.status), (0, 200));
        assert_eq!(hung.id, accepted.id, "the retry has the same webhook-id");
        assert_eq!((&hung.verified, &accepted.verified), (&Ok(()), &Ok(())));
        // The default timeout (10 s) would hold the retry back for 10 s; 300 ms and the backoff
        // (retry_max 300ms) bring it within a second or two.
        let gap = accepted.at - hung.at;
        assert!(
            gap >= Duration::from_millis(300) && gap < Duration::from_secs(5),
            "retried {gap:?} after the unanswered POST"
        );
    }
    let text = metrics(&s.gateway).await;
    let sink = s.sink();
    assert!(
        metric(
            &text,
            "tollgate_events_total",
            &[("sink", sink.as_str()), ("result", "failed")]
        ) > 0.0,
        "the unanswered POST counts as a failed delivery:\n{text}"
    );
    let log = s.gateway.stderr();
    assert!(
        log.contains("timed out"),
        "the log names the timeout:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_milestone_refused_for_good_is_skipped_after_give_up_after_and_the_next_arrives() {
    let s = Setup::start_with(
        "[first_call, limit_warning]",
        0,
        0,
        "      give_up_after: 1s\n",
    )
    .await;
    s.hooks.lock().unwrap().refuse = Some("first_call");
    s.calls().await;
    // Without `give_up_after` the refused first_call would hold limit_warning back for good.
    s.wait_for_accepted(&["limit_warning"]).await;

    {
        let hooks = s.hooks.lock().unwrap();
        let refused: Vec<&Attempt> = hooks
            .attempts
            .iter()
            .filter(|a| a.milestone == "first_call")
            .collect();
        assert!(refused.len() >= 2, "first_call retried before giving up");
        assert!(refused.iter().all(|a| a.status == 400));
        let (first, last) = (refused[0], refused[refused.len() - 1]);
        assert_eq!(first.id, last.id, "one webhook-id on every attempt");
        let window = last.at - first.at;
        assert!(
            window >= Duration::from_millis(1000) && window < Duration::from_secs(5),
            "given up after the last attempt, {window:?} after the first"
        );
        let warning = hooks
            .attempts
            .iter()
            .find(|a| a.milestone == "limit_warning")
            .unwrap();
        assert!(warning.at >= last.at, "limit_warning waited for first_call");
        assert_eq!(hooks.accepted()["limit_warning"].len(), 1);
        assert!(!hooks.accepted().contains_key("first_call"));
    }
    let text = metrics(&s.gateway).await;
    let sink = s.sink();
    assert_eq!(
        metric(
            &text,
            "tollgate_events_total",
            &[("sink", sink.as_str()), ("result", "gave_up")]
        ),
        1.0,
        "one milestone given up:\n{text}"
    );
    let log = s.gateway.stderr();
    assert!(
        log.contains("gave up on a milestone") && log.contains("400"),
        "the log says which and why:\n{log}"
    );
}

/// A receiver behind a private CA: with the CA in the webhook's `ca_file` the milestone
/// arrives over HTTPS, signed; without it no POST gets through the handshake, the failures are
/// counted, and the log names the certificate.
#[tokio::test(flavor = "multi_thread")]
async fn an_https_receiver_behind_a_private_ca_is_reached_through_ca_file() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(dir.path());
    let s = Setup::start_tls(
        "[first_call]",
        ca.server.clone(),
        &format!("      ca_file: \"{}\"\n", ca_file.display()),
    )
    .await;
    assert!(s.url.starts_with("https://"));
    let r = get(&s.client, &s.gateway.url("/v1/items"), Some(ACME_KEY)).await;
    assert_eq!(r.status, 200);
    s.wait_for_accepted(&["first_call"]).await;
    {
        let hooks = s.hooks.lock().unwrap();
        assert_eq!(hooks.attempts.len(), 1, "one POST");
        assert_eq!(hooks.attempts[0].verified, Ok(()));
        assert_eq!(hooks.attempts[0].status, 200);
    }

    let untrusted = Setup::start_tls("[first_call]", ca.server.clone(), "").await;
    let r = get(
        &untrusted.client,
        &untrusted.gateway.url("/v1/items"),
        Some(ACME_KEY),
    )
    .await;
    assert_eq!(r.status, 200, "the call itself is not held up");
    let sink = untrusted.sink();
    wait_for(
        "a failed delivery to the untrusted receiver",
        Duration::from_secs(15),
        || async {
            let text = metrics(&untrusted.gateway).await;
            metric(
                &text,
                "tollgate_events_total",
                &[("sink", sink.as_str()), ("result", "failed")],
            ) > 0.0
        },
    )
    .await;
    assert!(
        untrusted.hooks.lock().unwrap().attempts.is_empty(),
        "no POST without trusting the CA"
    );
    let log = untrusted.gateway.stderr();
    assert!(
        log.contains("invalid peer certificate"),
        "the log names the certificate:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_secret_needs_a_restart_and_no_secret_is_ever_printed() {
    let s = Setup::start("[first_call]", 0).await;
    let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    s.gateway.rewrite_config(&s.yaml.replace(SECRET, other));
    let reply = s
        .admin(reqwest::Method::POST, "/admin/v1/reload", Value::Null)
        .await;
    assert_eq!(
        reply["needs_restart"],
        json!(["telemetry"]),
        "the sink still signs with the old secret: {reply}"
    );
    let logs = s.gateway.stderr();
    for secret in [SECRET, other] {
        let key = secret.trim_start_matches("whsec_");
        assert!(!logs.contains(key), "a secret in the logs:\n{logs}");
        assert!(!reply.to_string().contains(key), "{reply}");
    }
}

/// Four failed POSTs, then each milestone accepted once; every attempt verified, and every
/// attempt at one milestone carried the same `webhook-id`.
fn same_id_on_every_attempt(hooks: &Hooks) {
    assert_eq!(
        hooks.attempts.iter().filter(|a| a.status == 500).count(),
        4,
        "the first four POSTs failed"
    );
    let mut ids: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for a in &hooks.attempts {
        assert_eq!(a.verified, Ok(()), "{} ({})", a.id, a.milestone);
        ids.entry(a.milestone.as_str())
            .or_default()
            .insert(a.id.as_str());
    }
    for (milestone, seen) in &ids {
        assert_eq!(
            seen.len(),
            1,
            "every attempt at {milestone} has one webhook-id"
        );
    }
    for (milestone, accepted) in hooks.accepted() {
        assert_eq!(accepted.len(), 1, "{milestone} accepted once: {accepted:?}");
    }
    assert_eq!(ids.len(), 3);
}

#[test]
fn broken_webhooks_are_refused_at_their_position() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config");
    let cases: &[(&str, &[&str])] = &[
        (
            "webhook_bad_secret.yaml",
            &[
                "43:15: `secret` of a webhook must start with `whsec_` followed by base64 (a Standard Webhooks secret)",
                "46:15: `secret` of a webhook must decode to 24 to 64 bytes after `whsec_`",
            ],
        ),
        (
            "webhook_unknown_event.yaml",
            &[
                "42:28: unknown milestone `signed_up` in `events` of a webhook; expected one of: first_call, activated, limit_warning, limit_reached, feature_denied, overage_started, plan_changed",
                "44:12: `url` of a webhook must start with http:// or https://, found \"ftp://crm.example.com/hooks\"",
                "45:15: `events` of a webhook needs at least one milestone: first_call, activated, limit_warning, limit_reached, feature_denied, overage_started, plan_changed",
                "50:16: `timeout` of a webhook must be a duration like 50ms, 2s, 1m, 1h or 1d, found \"soon\"",
                "54:16: `timeout` of a webhook must be more than 0",
                "55:22: `give_up_after` of a webhook must be a duration like 50ms, 2s, 1m, 1h or 1d, found \"forever\"",
                "59:16: `ca_file` is used only with a `url` starting with https://",
            ],
        ),
        (
            "webhooks_without_telemetry.yaml",
            &["39:5: `onboarding.webhooks` needs a `telemetry` section: webhooks are delivered from its spool and retried until acknowledged"],
        ),
    ];
    for (file, expected) in cases {
        let path = dir.join(file);
        let (code, stdout, stderr) = run_check(&path);
        assert_eq!(code, 1, "{file}\n{stdout}{stderr}");
        let output = format!("{stdout}{stderr}");
        let prefix = format!("{}:", path.display());
        let lines: Vec<&str> = output
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .collect();
        assert_eq!(lines, *expected, "{file}\n{output}");
        assert!(
            !output.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "the secret is never printed"
        );
    }
}
