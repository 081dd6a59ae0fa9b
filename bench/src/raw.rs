//! The transport's ceiling, measured in the same run against the same servers: raw JetStream with
//! async-nats, no SQLite, the engine's per-row message size.
//!
//! - throughput: publishes pipelined (the engine's `max_inflight`, 256, awaiting acks), publishes and
//!   consumes at once, and one publish per round trip (HarmonyLite's pattern);
//! - latency: an open-loop publisher at a given rate and a pull consumer, publish → receive.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::runtime::Runtime;

use crate::stats::{round, Latency};
use crate::sys::{mono_ns, Ctx, Res};

/// The engine's default `replication_log.max_inflight`.
pub const INFLIGHT: usize = 256;
const TIMEOUT: Duration = Duration::from_secs(120);

pub fn runtime() -> Res<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-raw")
        .enable_all()
        .build()
        .ctx("starting the baseline runtime")
}

async fn context(url: &str) -> Res<jetstream::Context> {
    let client = async_nats::connect(url).await.ctx("connecting to NATS")?;
    Ok(jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .build(client))
}

async fn fresh_stream(
    js: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Res<jetstream::stream::Stream> {
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.to_string(),
        subjects: vec![format!("{name}.x")],
        num_replicas: replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .ctx("creating a baseline stream")
}

async fn pull_messages(stream: &jetstream::stream::Stream) -> Res<consumer::pull::Stream> {
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .ctx("creating a baseline consumer")?;
    consumer
        .stream()
        .max_messages_per_batch(1000)
        .messages()
        .await
        .ctx("reading a baseline stream")
}

fn payload(size: usize, index: u64) -> Bytes {
    let mut bytes = vec![0x5a; size.max(8)];
    bytes[..8].copy_from_slice(&index.to_le_bytes());
    Bytes::from(bytes)
}

async fn publish_pipelined(
    js: &jetstream::Context,
    subject: &str,
    size: usize,
    count: usize,
) -> Res<()> {
    let mut inflight: FuturesUnordered<
        <jetstream::context::PublishAckFuture as std::future::IntoFuture>::IntoFuture,
    > = FuturesUnordered::new();
    for i in 0..count {
        if inflight.len() >= INFLIGHT {
            if let Some(ack) = inflight.next().await {
                ack.ctx("publish ack")?;
            }
        }
        let ack = js
            .publish(subject.to_string(), payload(size, i as u64))
            .await
            .ctx("publish")?;
        inflight.push(std::future::IntoFuture::into_future(ack));
    }
    while let Some(ack) = inflight.next().await {
        ack.ctx("publish ack")?;
    }
    Ok(())
}

/// Messages per second: pipelined publish alone, publish and consume at once, one publish per round trip.
/// Where a baseline runs: publisher and subscriber servers, stream replicas, message size.
pub struct Link<'a> {
    pub rt: &'a Runtime,
    pub pub_url: String,
    pub sub_url: String,
    pub replicas: usize,
    pub size: usize,
}

pub fn throughput(link: &Link<'_>, count: usize, sequential_count: usize, tag: &str) -> Res<Value> {
    let (rt, replicas, size) = (link.rt, link.replicas, link.size);
    let (pub_url, sub_url, tag) = (link.pub_url.clone(), link.sub_url.clone(), tag.to_string());
    rt.block_on(async move {
        let publisher = context(&pub_url).await?;
        let subscriber = context(&sub_url).await?;

        let name = format!("{tag}-pub");
        fresh_stream(&publisher, &name, replicas).await?;
        let started = mono_ns();
        tokio::time::timeout(
            TIMEOUT,
            publish_pipelined(&publisher, &format!("{name}.x"), size, count),
        )
        .await
        .ctx("pipelined publish")??;
        let publish_only = count as f64 / ((mono_ns() - started) as f64 / 1e9);
        let _ = publisher.delete_stream(&name).await;

        let name = format!("{tag}-both");
        fresh_stream(&publisher, &name, replicas).await?;
        let stream = subscriber
            .get_stream(&name)
            .await
            .ctx("opening the baseline stream")?;
        let mut messages = pull_messages(&stream).await?;
        let consume = tokio::spawn(async move {
            let mut seen = 0usize;
            while seen < count {
                match messages.next().await {
                    Some(Ok(_)) => seen += 1,
                    Some(Err(err)) => return Err(format!("consuming: {err}")),
                    None => return Err("the baseline consumer ended".to_string()),
                }
            }
            Ok(mono_ns())
        });
        let started = mono_ns();
        tokio::time::timeout(
            TIMEOUT,
            publish_pipelined(&publisher, &format!("{name}.x"), size, count),
        )
        .await
        .ctx("pipelined publish")??;
        let consumed_at = tokio::time::timeout(TIMEOUT, consume)
            .await
            .ctx("consuming")?
            .ctx("consumer task")??;
        let publish_and_consume = count as f64 / ((consumed_at - started) as f64 / 1e9);
        let _ = publisher.delete_stream(&name).await;

        let name = format!("{tag}-seq");
        fresh_stream(&publisher, &name, replicas).await?;
        let subject = format!("{name}.x");
        let started = mono_ns();
        for i in 0..sequential_count {
            publisher
                .publish(subject.clone(), payload(size, i as u64))
                .await
                .ctx("publish")?
                .await
                .ctx("publish ack")?;
        }
        let sequential = sequential_count as f64 / ((mono_ns() - started) as f64 / 1e9);
        let _ = publisher.delete_stream(&name).await;
        Ok(json!({
            "publish_msgs_per_s": round(publish_only),
            "publish_and_consume_msgs_per_s": round(publish_and_consume),
            "one_publish_per_round_trip_msgs_per_s": round(sequential),
        }))
    })
}

/// Publish → receive latency of `count` messages published open-loop at `rate` per second.
pub fn latency(link: &Link<'_>, rate: u64, count: usize, tag: &str) -> Res<Latency> {
    let (rt, replicas, size) = (link.rt, link.replicas, link.size);
    let name = tag.to_string();
    let subject = format!("{name}.x");
    let (publisher, mut messages) = {
        let (pub_url, sub_url, name) = (link.pub_url.clone(), link.sub_url.clone(), name.clone());
        rt.block_on(async move {
            let publisher = context(&pub_url).await?;
            let subscriber = context(&sub_url).await?;
            fresh_stream(&publisher, &name, replicas).await?;
            let stream = subscriber
                .get_stream(&name)
                .await
                .ctx("opening the baseline stream")?;
            let messages = pull_messages(&stream).await?;
            Ok::<_, String>((publisher, messages))
        })?
    };
    let received: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(vec![0; count]));
    let receiver = {
        let received = received.clone();
        rt.spawn(async move {
            let mut seen = 0usize;
            let mut errors = Vec::new();
            while seen < count {
                // Ten quiet seconds mean the rest is not coming (a publish that failed, for one).
                let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
                let message = match next {
                    Ok(Some(Ok(message))) => message,
                    // Transient (a missed heartbeat, a pull that expired): the stream goes on.
                    Ok(Some(Err(err))) if errors.len() < 100 => {
                        errors.push(err.to_string());
                        continue;
                    }
                    Ok(_) => break,
                    Err(_) => {
                        errors.push(format!("nothing received for 10 s after {seen} messages"));
                        break;
                    }
                };
                let now = mono_ns();
                let mut index = [0u8; 8];
                if message.payload.len() >= 8 {
                    index.copy_from_slice(&message.payload[..8]);
                }
                let index = u64::from_le_bytes(index) as usize;
                if let Ok(mut slots) = received.lock() {
                    if index < slots.len() && slots[index] == 0 {
                        slots[index] = now;
                        seen += 1;
                    }
                }
            }
            errors
        })
    };
    let (acks_tx, mut acks_rx) =
        tokio::sync::mpsc::unbounded_channel::<jetstream::context::PublishAckFuture>();
    let acker = rt.spawn(async move {
        let mut inflight = FuturesUnordered::new();
        let mut open = true;
        let mut failed = Vec::new();
        while open || !inflight.is_empty() {
            tokio::select! {
                ack = acks_rx.recv(), if open => match ack {
                    Some(ack) => inflight.push(std::future::IntoFuture::into_future(ack)),
                    None => open = false,
                },
                Some(result) = inflight.next(), if !inflight.is_empty() => {
                    if let Err(err) = result {
                        failed.push(err.to_string());
                    }
                }
            }
        }
        failed
    });
    // Paced on this thread (sleep is finer than the runtime's 1 ms timer); each publish only hands the
    // message to the client, the acks are awaited concurrently.
    let mut sent = vec![0u64; count];
    let t0 = mono_ns() + 1_000_000;
    for (i, slot) in sent.iter_mut().enumerate() {
        let due = t0 + (i as u64) * 1_000_000_000 / rate.max(1);
        let now = mono_ns();
        if due > now {
            std::thread::sleep(Duration::from_nanos(due - now));
        }
        *slot = mono_ns();
        let ack = rt
            .block_on(publisher.publish(subject.clone(), payload(size, i as u64)))
            .ctx("publish")?;
        let _ = acks_tx.send(ack);
    }
    drop(acks_tx);
    let (failed_publishes, outcome) = rt.block_on(async {
        let failed = match tokio::time::timeout(Duration::from_secs(60), acker).await {
            Ok(Ok(failed)) => failed,
            _ => vec!["the publish acknowledgements did not finish within 60 s".to_string()],
        };
        (
            failed,
            tokio::time::timeout(Duration::from_secs(60), receiver).await,
        )
    });
    let errors = match outcome {
        Ok(Ok(errors)) => errors,
        Ok(Err(err)) => return Err(format!("baseline consumer task: {err}")),
        Err(_) => return Err("baseline consumer did not finish within 60 s".into()),
    };
    let _ = rt.block_on(publisher.delete_stream(&name));
    let slots = received.lock().map(|s| s.clone()).unwrap_or_default();
    let samples: Vec<f64> = slots
        .iter()
        .zip(&sent)
        .filter(|(r, _)| **r != 0)
        .map(|(r, s)| r.saturating_sub(*s) as f64 / 1e6)
        .collect();
    if samples.len() != count {
        let mut failed = failed_publishes.clone();
        failed.dedup();
        return Err(format!(
            "baseline {tag}: received {} of {count} messages; {} publishes failed ({}); consumer: {}",
            samples.len(),
            failed_publishes.len(),
            failed.join("; "),
            errors.join("; ")
        ));
    }
    Ok(Latency::of_ms(samples))
}
