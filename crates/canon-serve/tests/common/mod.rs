//! The test server shared by the server tests: a tiny GGUF model written by the test, served on a
//! free loopback port until the value is dropped.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use canon_infer::{Engine, EngineConfig};
use canon_serve::{Loaded, ServeConfig, Server};
use canon_testkit::tiny_gguf::{TINY_CHATML, TinyLlama, write_tiny_llama};
use serde_json::Value;

pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn start(slots: usize, queue: usize, api_key: Option<&str>) -> Running {
    start_ctx(slots, queue, api_key, 128)
}

pub fn start_ctx(slots: usize, queue: usize, api_key: Option<&str>, ctx: u32) -> Running {
    start_with(slots, queue, api_key, ctx, None)
}

pub fn start_with(
    slots: usize,
    queue: usize,
    api_key: Option<&str>,
    ctx: u32,
    tools: Option<std::sync::Arc<canon_agent::tools::Toolbox>>,
) -> Running {
    start_full(slots, queue, api_key, ctx, tools, None)
}

/// [`start_with`] with an index for `/v1/search` and `/v1/ask`.
pub fn start_full(
    slots: usize,
    queue: usize,
    api_key: Option<&str>,
    ctx: u32,
    tools: Option<std::sync::Arc<canon_agent::tools::Toolbox>>,
    retriever: Option<std::sync::Arc<canon_rag::answer::Retriever>>,
) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_llama(
        &path,
        &TinyLlama {
            context_length: ctx,
            ..Default::default()
        },
    )
    .unwrap();
    let cfg = ServeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        api_key: api_key.map(str::to_string),
        max_body_bytes: 64 << 10,
    };
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = Server::bind(&cfg).await.unwrap();
            addr_tx.send(server.local_addr().unwrap()).unwrap();
            let _loading = server.spawn_load(move || {
                let mut lm = canon_models::load::load_gguf_lm(
                    &path,
                    canon_models::WeightMode::KeepQuantized,
                )
                .map_err(|e| e.to_string())?;
                if lm.chat_template.is_none() {
                    lm.chat_template = Some(
                        canon_text::ChatTemplate::new(TINY_CHATML, "", "")
                            .map_err(|e| e.to_string())?,
                    );
                }
                let chat_template = lm.chat_template.clone();
                let engine = Engine::start(
                    lm,
                    EngineConfig {
                        slots,
                        ctx_size: 0,
                        prefill_chunk: 32,
                        queue_limit: queue,
                    },
                )
                .map_err(|e| e.to_string())?;
                Ok(Loaded {
                    engine,
                    chat_template,
                    model_id: "tiny".into(),
                    embedder: None,
                    tools,
                    retriever,
                })
            });
            server
                .run(async move {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let r = Running {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
        _dir: dir,
    };
    // Wait until the model is loaded.
    for _ in 0..300 {
        if client()
            .get(r.url("/health"))
            .send()
            .is_ok_and(|x| x.status() == 200)
        {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the server did not become ready");
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = client().post(self.url(path)).json(body).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }
    pub fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let r = client()
            .post(self.url(path))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }
    pub fn metric(&self, name: &str) -> f64 {
        let text = client()
            .get(self.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}
