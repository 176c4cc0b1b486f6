//! The harness itself, without the gateway: so a failure elsewhere points at the gateway.

use crate::common::{client, get, refused_addr, RedisServer, Upstream};

#[tokio::test(flavor = "multi_thread")]
async fn redis_server_starts_dies_and_restarts_on_the_same_socket() {
    let mut redis = RedisServer::start().await;
    redis.command(&["SET", "k", "7"]).await;
    assert_eq!(redis.get_int("k").await, 7);

    redis.kill();
    assert!(redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .is_err());

    redis.restart().await;
    assert_eq!(
        redis.get_int("k").await,
        0,
        "a restarted server starts empty"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_echoes_requests_and_sends_hop_by_hop_headers() {
    let upstream = Upstream::start().await;
    let client = client();

    let answer = get(
        &client,
        &format!("http://{}/v1/x?y=1", upstream.addr()),
        Some("k"),
    )
    .await;
    let status = get(
        &client,
        &format!("http://{}/status/502", upstream.addr()),
        None,
    )
    .await;

    assert_eq!(answer.json()["path"], "/v1/x?y=1");
    assert_eq!(answer.echoed_headers()["authorization"], ["Bearer k"]);
    assert_eq!(answer.header("x-hop"), Some("1"));
    assert_eq!(answer.header("keep-alive"), Some("timeout=5"));
    assert_eq!(status.status, 502);
    assert_eq!(upstream.hits(), 2);
    assert!(std::net::TcpStream::connect(refused_addr()).is_err());
}
