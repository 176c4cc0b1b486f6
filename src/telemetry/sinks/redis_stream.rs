//! `redis_stream`: one stream entry per event (field `event`), `XADD … MAXLEN ~`, pipelined per
//! batch.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::MultiplexedConnection;

use super::{within, Sink, SinkError};

/// Upper bound on connecting and on one pipelined batch.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Appends events to a Redis stream.
pub struct RedisStreamSink {
    client: redis::Client,
    stream: String,
    max_len: u64,
    conn: Option<MultiplexedConnection>,
}

impl RedisStreamSink {
    /// A sink appending to `stream` at `url`, trimming it to about `max_len` entries.
    pub fn new(url: &str, stream: &str, max_len: u64) -> Result<RedisStreamSink, SinkError> {
        Ok(RedisStreamSink {
            client: redis::Client::open(url)?,
            stream: stream.to_string(),
            max_len,
            conn: None,
        })
    }
}

impl RedisStreamSink {
    /// One `XADD` per event, each command's buffer sized once. The replies are read but not
    /// kept (no `ignore()`: it files every command's index in a hash set).
    fn xadds(&self, batch: &[Bytes]) -> redis::Pipeline {
        let max_len = self.max_len.to_string();
        let fixed =
            XADD_ARGS.iter().map(|a| a.len()).sum::<usize>() + self.stream.len() + max_len.len();
        let mut pipe = redis::Pipeline::with_capacity(batch.len());
        for event in batch {
            let mut cmd = redis::Cmd::with_capacity(8, fixed + event.len());
            cmd.arg("XADD")
                .arg(&self.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(&max_len)
                .arg("*")
                .arg("event")
                .arg(event.as_ref());
            pipe.add_command(cmd);
        }
        pipe
    }
}

/// The constant arguments of each `XADD`.
const XADD_ARGS: [&str; 5] = ["XADD", "MAXLEN", "~", "*", "event"];

#[async_trait]
impl Sink for RedisStreamSink {
    async fn deliver(&mut self, batch: &[Bytes]) -> Result<(), SinkError> {
        let mut conn = match &self.conn {
            Some(c) => c.clone(),
            None => {
                // redis-rs answers "timed out" after 500 ms by default; a batch of hundreds of
                // XADDs on a busy server can take longer, and a timed-out batch is sent again
                // (duplicates). Give each batch the sink's whole bound instead.
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(TIMEOUT))
                    .set_response_timeout(Some(TIMEOUT));
                let c = within(TIMEOUT, async {
                    Ok(self
                        .client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?)
                })
                .await?;
                self.conn = Some(c.clone());
                c
            }
        };
        let pipe = self.xadds(batch);
        let result = within(TIMEOUT, async {
            Ok(pipe.query_async::<()>(&mut conn).await?)
        })
        .await;
        if result.is_err() {
            // A fresh connection next time: this one may be half-broken.
            self.conn = None;
        }
        result
    }
}
