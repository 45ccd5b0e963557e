//! The chat page in a real headless Chromium, driven over WebDriver (chromedriver): the test types
//! a question, presses Enter, and waits for the streamed answer to appear; it must equal the
//! answer the API gives for the same conversation. Needs `chromedriver` and Chromium (Debian's
//! `chromium` and `chromium-driver`, which `.ci/run` installs); where they are missing the test
//! says so and passes without running, unless `CANON_REQUIRE_BROWSER=1`.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, start};
use serde_json::{Value, json};

/// The W3C WebDriver key for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    base: String,
    session: Option<String>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = client().delete(format!("{}/session/{s}", self.base)).send();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(name: &str, env: &str, fallbacks: &[&str]) -> Option<String> {
    if let Ok(p) = std::env::var(env) {
        return Some(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .chain(fallbacks.iter().map(std::path::PathBuf::from))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

impl Driver {
    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let s = self.session.as_deref().unwrap_or_default();
        let url = format!("{}/session/{s}{path}", self.base);
        let r = match method {
            "GET" => client().get(url).send(),
            _ => client().post(url).json(&body).send(),
        }
        .unwrap();
        let v: Value = r.json().unwrap();
        assert!(v["value"]["error"].is_null(), "webdriver {path}: {v}");
        v["value"].clone()
    }

    fn element(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        v[ELEMENT].as_str().unwrap().to_string()
    }

    fn script(&self, js: &str) -> Value {
        self.cmd("POST", "/execute/sync", json!({"script": js, "args": []}))
    }
}

fn start_driver(driver: &str, browser: &str) -> Driver {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut d = Driver {
        child,
        base: format!("http://127.0.0.1:{port}"),
        session: None,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while client()
        .get(format!("{}/status", d.base))
        .send()
        .map_or(true, |r| !r.status().is_success())
    {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
        "binary": browser,
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    }}}});
    let r: Value = client()
        .post(format!("{}/session", d.base))
        .json(&caps)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = r["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no WebDriver session: {r}"));
    d.session = Some(id.to_string());
    d
}

#[test]
fn the_chat_page_streams_an_answer_in_a_real_browser() {
    let driver = find(
        "chromedriver",
        "CANON_CHROMEDRIVER",
        &["/usr/bin/chromedriver"],
    );
    let browser = find("chromium", "CANON_CHROMIUM", &["/usr/bin/chromium"]);
    let (Some(driver), Some(browser)) = (driver, browser) else {
        assert!(
            std::env::var("CANON_REQUIRE_BROWSER").is_err(),
            "CANON_REQUIRE_BROWSER is set but chromedriver or chromium is missing"
        );
        eprintln!("skipped: chromedriver and chromium are not installed");
        return;
    };
    let s = start(2, 8, None);
    // The API's greedy answer to the conversation the page will send, asked twice so that the
    // page's request meets the same cached prompt as the second one.
    let body = json!({"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 12, "temperature": 0, "stream": true});
    let mut want = String::new();
    for _ in 0..2 {
        let text = client()
            .post(s.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .unwrap()
            .text()
            .unwrap();
        want = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
    }
    let d = start_driver(&driver, &browser);
    d.cmd("POST", "/url", json!({"url": s.url("/")}));
    d.script("document.getElementById('temperature').value = '0'; document.getElementById('max_tokens').value = '12';");
    let input = d.element("#input");
    d.cmd(
        "POST",
        &format!("/element/{input}/value"),
        json!({"text": "hello there\u{E007}"}), // U+E007 is WebDriver's Enter key
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let (answer, stats) = loop {
        let v = d.script(
            "const a = document.querySelector('[id^=answer-]'); return [a ? a.textContent : '', document.getElementById('stats').textContent];",
        );
        let answer = v[0].as_str().unwrap_or_default().to_string();
        let stats = v[1].as_str().unwrap_or_default().to_string();
        if !stats.is_empty() {
            break (answer, stats);
        }
        assert!(Instant::now() < deadline, "no answer appeared: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(stats.contains("tokens/s"), "stats line: {stats:?}");
    assert!(
        !answer.is_empty() && !answer.starts_with("error:"),
        "{answer:?}"
    );
    assert_eq!(
        answer, want,
        "the page shows a different answer than the API"
    );
    // The question is in the conversation log too.
    let log = d.script("return document.getElementById('log').textContent;");
    assert!(log.as_str().unwrap().contains("hello there"));
}
