//! JWT callers: tokens signed by `openssl` against keys published by a real JWKS server.
//! Every forged or stale token is a 401 that names its failure class, echoes nothing of the
//! token, and touches no counter.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::jwt::{hs256, jwks, JwksServer, KeyPair, Kind};
use crate::common::{clock::now_secs, render, Answer, Gateway, RedisServer, Upstream};

const ISSUER: &str = "https://idp.example.test/";
const AUDIENCE: &str = "api.example.test";
const HS_ISSUER: &str = "https://hs.example.test/";
const HS_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

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
tenants:
  acme:
    plan: free
auth:
  jwt:
    - issuer: "https://idp.example.test/"
      audience: ["api.example.test", "other.example.test"]
      algorithms: ["RS256", "ES256"]
      jwks_url: "{jwks}"
      jwks_refresh: { min: 1s, max: 1h }
      tenant_claim: org_id
      plan_claim: plan
      default_plan: free
      user_claim: sub
      leeway: 30s
    - issuer: "https://hs.example.test/"
      audience: "api.example.test"
      algorithms: ["HS256"]
      secret: "an-hs256-secret-of-at-least-32-bytes!"
      tenant_claim: org
plans:
  free:
    meters:
      requests: { limit: 1000, period: month }
  pro:
    meters:
      requests: { limit: 100000, period: month }
routes:
  - name: api
    match: { path_prefix: /v1/ }
    upstream: product
    meter: { requests: 1 }
"#;

struct Jwt {
    gateway: Gateway,
    upstream: Upstream,
    redis: RedisServer,
    jwks: JwksServer,
    rsa: KeyPair,
    ec: KeyPair,
    client: reqwest::Client,
}

impl Jwt {
    /// Redis, an upstream, a JWKS server publishing one RSA and one EC key, and a gateway that
    /// has fetched them.
    async fn start() -> Jwt {
        Jwt::start_with("max-age=3600").await
    }

    /// As `start`, the JWKS answers carrying `cache_control`.
    async fn start_with(cache_control: &str) -> Jwt {
        let rsa = KeyPair::generate(Kind::Rsa, "rsa-1");
        let ec = KeyPair::generate(Kind::Ec, "ec-1");
        let jwks_server = JwksServer::start(jwks(&[&rsa, &ec])).await;
        jwks_server.set_cache_control(cache_control);
        let redis = RedisServer::start().await;
        let upstream = Upstream::start().await;
        let yaml =
            render(YAML, &redis.url(), &upstream.addr()).replace("{jwks}", &jwks_server.url());
        let gateway = Gateway::start(&yaml).await;
        let jwt = Jwt {
            gateway,
            upstream,
            redis,
            jwks: jwks_server,
            rsa,
            ec,
            client: crate::common::client(),
        };
        jwt.wait_for_startup_fetch().await;
        jwt
    }

    async fn wait_for_startup_fetch(&self) {
        for _ in 0..100 {
            if self.jwks.hits() >= 1 {
                // The fetch was served; give the gateway a moment to swap the key set in.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the gateway never fetched its JWKS at startup");
    }

    async fn call(&self, token: &str) -> Answer {
        let response = self
            .client
            .get(self.gateway.url("/v1/items"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        crate::common::http::read(response).await
    }

    async fn usage_keys(&self) -> Vec<String> {
        let mut conn = self.redis.conn().await;
        redis::cmd("KEYS")
            .arg("tg:*")
            .query_async(&mut conn)
            .await
            .unwrap()
    }
}

/// Claims that pass every check, for tenant `org`.
fn claims(org: &str) -> Value {
    let now = now_secs();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "user-42", "org_id": org,
        "iat": now, "exp": now + 600,
    })
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().unwrap().remove(key);
    base
}

/// A 401 problem whose detail contains `class`, with a Bearer `invalid_token` challenge, that
/// says nothing of the token it refused.
fn assert_refused(answer: &Answer, token: &str, class: &str, case: &str) {
    assert_eq!(answer.status, 401, "{case}: {}", answer.body);
    let problem = answer.problem(401);
    assert_eq!(problem["type"], "urn:tollgate:unauthenticated", "{case}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.to_lowercase().contains(class),
        "{case}: detail {detail:?} should say {class:?}"
    );
    let challenge = answer.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains(r#"error="invalid_token""#) && challenge.contains("error_description="),
        "{case}: WWW-Authenticate {challenge:?}"
    );
    for part in token.split('.').filter(|p| p.len() > 8) {
        assert!(
            !answer.body.contains(part),
            "{case}: the answer echoes the token"
        );
        assert!(
            !challenge.contains(part),
            "{case}: the challenge echoes the token"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_signed_by_openssl_identify_the_tenant_plan_and_user() {
    let t = Jwt::start().await;

    let rs = t.call(&t.rsa.sign(&claims("acme"))).await;
    assert_eq!(rs.status, 200, "RS256: {}", rs.body);
    let es = t.call(&t.ec.sign(&claims("acme"))).await;
    assert_eq!(es.status, 200, "ES256: {}", es.body);
    let seen = es.echoed_headers();
    assert_eq!(seen["x-tollgate-tenant"], ["acme"]);
    assert_eq!(
        seen["x-tollgate-plan"],
        ["free"],
        "the configured tenant's plan"
    );
    assert!(
        !seen.contains_key("authorization"),
        "the token is not forwarded"
    );

    // A tenant known only from its token: the plan claim decides, else `default_plan`.
    let pro = t
        .call(&t.rsa.sign(&with(claims("newco"), "plan", json!("pro"))))
        .await;
    assert_eq!(pro.status, 200, "{}", pro.body);
    assert_eq!(pro.echoed_headers()["x-tollgate-plan"], ["pro"]);
    let default = t.call(&t.rsa.sign(&claims("otherco"))).await;
    assert_eq!(default.echoed_headers()["x-tollgate-plan"], ["free"]);

    // One audience of several is enough; an HS256 issuer with a shared secret works too.
    let multi = t
        .call(
            &t.rsa
                .sign(&with(claims("acme"), "aud", json!(["x", AUDIENCE]))),
        )
        .await;
    assert_eq!(multi.status, 200, "{}", multi.body);
    let hs_claims =
        json!({"iss": HS_ISSUER, "aud": AUDIENCE, "org": "acme", "exp": now_secs() + 60});
    let hs = t
        .call(&hs256(
            HS_SECRET.as_bytes(),
            &json!({"alg": "HS256", "typ": "JWT"}),
            &hs_claims,
        ))
        .await;
    assert_eq!(hs.status, 200, "HS256: {}", hs.body);

    assert_eq!(
        t.redis
            .get_int(&crate::common::month_key("acme", "requests"))
            .await,
        4
    );
    assert_eq!(
        t.redis
            .get_int(&crate::common::month_key("newco", "requests"))
            .await,
        1
    );
    assert_eq!(t.upstream.hits(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_minted_by_the_verifying_crate_interoperate_too() {
    let t = Jwt::start().await;
    let key =
        jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(t.rsa.private_path()).unwrap())
            .unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(t.rsa.kid.clone());
    let token = jsonwebtoken::encode(&header, &claims("acme"), &key).unwrap();
    let answer = t.call(&token).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_and_stale_tokens_are_refused_without_touching_a_counter() {
    let t = Jwt::start().await;
    let attacker = KeyPair::generate(Kind::Rsa, "rsa-1");
    let attacker_jwks = JwksServer::start(jwks(&[&attacker])).await;
    let now = now_secs();
    let good = claims("acme");
    let rsa_header = |extra: Value| {
        let mut h = json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-1"});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        h
    };
    let valid = t.rsa.sign(&good);
    let (input, _) = valid.rsplit_once('.').unwrap();

    let mut cases: Vec<(&str, String, &str)> = Vec::new();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "JWT"});
        let unsigned = crate::common::jwt::signing_input(&header, &good);
        cases.push((
            "alg none, empty signature",
            format!("{unsigned}."),
            "malformed",
        ));
        cases.push((
            "alg none, junk signature",
            format!("{unsigned}.AAAA"),
            "algorithm",
        ));
    }
    cases.push((
        "HS256 keyed with the RS public key",
        hs256(
            t.rsa.public_pem.as_bytes(),
            &json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}),
            &good,
        ),
        "algorithm",
    ));
    cases.push(("stripped signature", format!("{input}."), "malformed"));
    cases.push((
        "signature of another token",
        format!(
            "{input}.{}",
            t.rsa.sign(&claims("other")).rsplit_once('.').unwrap().1
        ),
        "signature",
    ));
    cases.push((
        "unknown kid",
        t.rsa
            .sign_with_header(&rsa_header(json!({"kid": "rsa-2"})), &good),
        "key id",
    ));
    cases.push((
        "kid with path traversal",
        t.rsa
            .sign_with_header(&rsa_header(json!({"kid": "../../../../etc/passwd"})), &good),
        "key id",
    ));
    cases.push((
        "jku pointing at an attacker JWKS",
        attacker.sign_with_header(&rsa_header(json!({"jku": attacker_jwks.url()})), &good),
        "signature",
    ));
    cases.push((
        "x5u pointing at an attacker JWKS",
        attacker.sign_with_header(&rsa_header(json!({"x5u": attacker_jwks.url()})), &good),
        "signature",
    ));
    cases.push((
        "embedded attacker jwk",
        attacker.sign_with_header(&rsa_header(json!({"jwk": attacker.jwk})), &good),
        "signature",
    ));
    cases.push((
        "unknown crit",
        t.rsa.sign_with_header(
            &rsa_header(json!({"crit": ["exp-ext"], "exp-ext": 1})),
            &good,
        ),
        "critical",
    ));
    cases.push((
        "expired",
        t.rsa.sign(&with(good.clone(), "exp", json!(now - 3600))),
        "expired",
    ));
    cases.push((
        "nbf in the future",
        t.rsa.sign(&with(good.clone(), "nbf", json!(now + 3600))),
        "not valid yet",
    ));
    cases.push((
        "exp as a string",
        t.rsa
            .sign(&with(good.clone(), "exp", json!((now + 600).to_string()))),
        "malformed",
    ));
    cases.push((
        "exp missing",
        t.rsa.sign(&without(good.clone(), "exp")),
        "malformed",
    ));
    cases.push((
        "wrong aud",
        t.rsa
            .sign(&with(good.clone(), "aud", json!("evil.example"))),
        "audience",
    ));
    cases.push((
        "aud missing",
        t.rsa.sign(&without(good.clone(), "aud")),
        "audience",
    ));
    cases.push((
        "wrong iss",
        t.rsa
            .sign(&with(good.clone(), "iss", json!("https://evil.example/"))),
        "issuer",
    ));
    cases.push((
        "leeway + 1 s past exp",
        t.rsa.sign(&with(good.clone(), "exp", json!(now - 31))),
        "expired",
    ));
    cases.push((
        "leeway + 1 s before nbf",
        t.rsa.sign(&with(good.clone(), "nbf", json!(now + 32))),
        "not valid yet",
    ));
    cases.push((
        "tenant claim missing",
        t.rsa.sign(&without(good.clone(), "org_id")),
        "org_id",
    ));
    cases.push((
        "tenant claim not an id",
        t.rsa.sign(&with(good.clone(), "org_id", json!("a b/c"))),
        "tenant",
    ));
    cases.push((
        "plan claim naming no plan",
        t.rsa.sign(&with(good.clone(), "plan", json!("platinum"))),
        "plan",
    ));
    cases.push(("not base64", "a.b.c".into(), "malformed"));

    for (case, token, class) in &cases {
        let answer = t.call(token).await;
        assert_refused(&answer, token, class, case);
    }
    assert_eq!(attacker_jwks.hits(), 0, "jku/x5u must never be followed");
    assert!(
        t.usage_keys().await.is_empty(),
        "a refused call touched counters: {:?}",
        t.usage_keys().await
    );
    assert_eq!(t.upstream.hits(), 0);

    // Just inside the leeway on both sides is accepted (the second-exact boundaries are unit
    // tests with a fixed clock in `pipeline::jwt`).
    let inside = with(
        with(good.clone(), "exp", json!(now - 28)),
        "nbf",
        json!(now + 28),
    );
    assert_eq!(t.call(&t.rsa.sign(&inside)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_works_without_restart_and_the_removed_one_stops() {
    let t = Jwt::start().await;
    assert_eq!(t.call(&t.rsa.sign(&claims("acme"))).await.status, 200);

    let next = KeyPair::generate(Kind::Rsa, "rsa-2");
    t.jwks.publish(jwks(&[&next, &t.ec]));
    let rotated = t.call(&next.sign(&claims("acme"))).await;
    assert_eq!(
        rotated.status, 200,
        "the new kid is fetched on first sight: {}",
        rotated.body
    );

    let old = t.rsa.sign(&claims("acme"));
    assert_refused(&t.call(&old).await, &old, "key id", "removed kid");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_unknown_kids_refetches_the_jwks_at_most_once() {
    let t = Jwt::start().await;
    let before = t.jwks.hits();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..40 {
        let token = t.rsa.sign_with_header(
            &json!({"alg": "RS256", "typ": "JWT", "kid": format!("nope-{i}")}),
            &claims("acme"),
        );
        let (client, url) = (t.client.clone(), t.gateway.url("/v1/items"));
        calls.spawn(async move { crate::common::get(&client, &url, Some(&token)).await.status });
    }
    let statuses = calls.join_all().await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let refetches = t.jwks.hits() - before;
    assert_eq!(
        refetches, 1,
        "40 unknown kids within 30 s cause exactly one refetch"
    );
    assert!(t.usage_keys().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_issuer_is_down_the_last_good_keys_keep_serving() {
    // Answers that may be cached for only a second: the gateway refreshes every second.
    let t = Jwt::start_with("public, max-age=1").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        t.jwks.hits() >= 3,
        "max-age=1 (floor 1s) refreshes in the background"
    );

    t.jwks.fail_with(503);
    let failed_before = t.jwks.hits();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        t.jwks.hits() > failed_before,
        "the refresher kept trying while the issuer was down"
    );
    let answer = t.call(&t.ec.sign(&claims("acme"))).await;
    assert_eq!(
        answer.status, 200,
        "cached keys still verify: {}",
        answer.body
    );
    assert!(
        t.gateway.stderr().contains("Fetching the JWKS failed"),
        "the outage is logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bearer_api_key_still_works_beside_jwt_issuers() {
    let yaml = YAML.replace(
        "  acme:\n    plan: free\n",
        "  acme:\n    plan: free\n    keys:\n      - id: acme-1\n        sha256: \"{acme_sha}\"\n",
    );
    let rsa = KeyPair::generate(Kind::Rsa, "rsa-1");
    let server = JwksServer::start(jwks(&[&rsa])).await;
    let redis = RedisServer::start().await;
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(
        &render(&yaml, &redis.url(), &upstream.addr()).replace("{jwks}", &server.url()),
    )
    .await;
    let client = crate::common::client();
    let answer = crate::common::get(
        &client,
        &gateway.url("/v1/items"),
        Some(crate::common::ACME_KEY),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.echoed_headers()["x-tollgate-tenant"], ["acme"]);
}
