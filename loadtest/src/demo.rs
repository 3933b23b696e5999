//! `tidings-loadtest demo`: the quick start's live traffic. Two agent runs make progress on
//! `project:<project>`, a pull request arrives through the real GitHub route (signed like
//! GitHub signs it), check runs follow it, and a notification reaches the demo user's inbox
//! now and then, so `scripts/cluster`'s dashboard URL shows a moving page.
//!
//! Not a load scenario: a few messages a second, until stopped (or `--rounds` runs out).

use std::time::Duration;

use anyhow::Context as _;
use aws_lc_rs::hmac;
use serde_json::{Value, json};
use tidings_shared::auth::{Claims, now_unix, sign_hs256};

/// Repository id of the demo's pull request (GitHub's own example repository,
/// `octocat/Hello-World`): its events land on `project:1296269`.
pub const DEMO_REPOSITORY_ID: u64 = 1_296_269;

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Gateway base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The gateway's TIDINGS_JWT_SECRET (to mint a service token).
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The gateway's TIDINGS_GITHUB_WEBHOOK_SECRET; without it no PR is sent.
    #[arg(long, env = "TIDINGS_GITHUB_WEBHOOK_SECRET", hide_env_values = true)]
    pub github_secret: Option<String>,
    /// Project the agent runs report on.
    #[arg(long, default_value = "demo")]
    pub project: String,
    /// User whose inbox gets notifications.
    #[arg(long, default_value = "demo")]
    pub user: String,
    /// Rounds of progress (0 = until stopped); each round takes both runs from 0 to 100.
    #[arg(long, default_value_t = 0)]
    pub rounds: u32,
    /// Pause between two progress steps.
    #[arg(long, default_value = "700ms", value_parser = tidings_shared::config::parse_duration)]
    pub step: Duration,
}

struct Demo {
    http: reqwest::Client,
    args: DemoArgs,
    token: String,
}

impl Demo {
    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post(format!("{}{path}", self.args.url))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "POST {path}: {status} {answer}");
        Ok(answer)
    }

    async fn progress(&self, run: &str, progress: u32, step: &str) -> anyhow::Result<()> {
        let status = if progress >= 100 { "succeeded" } else { "running" };
        let data = json!({"run_id": run, "progress": progress, "status": status, "step": step});
        let channel = format!("project:{}", self.args.project);
        self.post(
            "/api/v1/publish",
            &json!({"channel": channel, "event": "agent_run_progress", "data": data}),
        )
        .await
        .map(drop)
    }

    /// A GitHub event through the real route, signed with the webhook secret.
    async fn github(&self, secret: &str, event: &str, payload: &Value) -> anyhow::Result<()> {
        let body = serde_json::to_vec(payload)?;
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), &body);
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let resp = self
            .http
            .post(format!("{}/api/v1/webhooks/github", self.args.url))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", format!("demo-{}", nuid::next()))
            .header("X-Hub-Signature-256", format!("sha256={hex}"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "GitHub route: {}", resp.status());
        Ok(())
    }

    async fn notify(&self, round: u32) -> anyhow::Result<()> {
        self.http
            .put(format!("{}/api/v1/templates/demo_run_finished", self.args.url))
            .bearer_auth(&self.token)
            .json(
                &json!({"in_app": {"title": "Run {{ run }} finished", "body": "Round {{ round }}: all steps passed."}}),
            )
            .send()
            .await?
            .error_for_status()?;
        let request = json!({"user": self.args.user, "project": self.args.project, "template": "demo_run_finished",
            "data": {"run": "run-a", "round": round}, "priority": "normal", "channels": ["in_app"]});
        self.post("/api/v1/notifications", &request).await.map(drop)
    }
}

fn pull_request(action: &str, number: u64, title: &str, merged: bool) -> Value {
    json!({
        "action": action, "number": number,
        "pull_request": {"number": number, "title": title, "state": if action == "closed" { "closed" } else { "open" },
            "merged": merged, "html_url": format!("https://github.com/octocat/Hello-World/pull/{number}"),
            "user": {"login": "octocat"}, "head": {"sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e"}},
        "repository": {"id": DEMO_REPOSITORY_ID, "full_name": "octocat/Hello-World",
            "html_url": "https://github.com/octocat/Hello-World"},
        "sender": {"login": "octocat"}
    })
}

fn check_run(name: &str, status: &str, conclusion: Option<&str>) -> Value {
    json!({
        "action": if status == "completed" { "completed" } else { "created" },
        "check_run": {"name": name, "status": status, "conclusion": conclusion,
            "html_url": "https://github.com/octocat/Hello-World/runs/4", "head_sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e",
            "app": {"name": "Tidings CI"}},
        "repository": {"id": DEMO_REPOSITORY_ID, "full_name": "octocat/Hello-World"}
    })
}

const STEPS: [&str; 5] = ["checkout", "plan", "edit", "test", "review"];

/// Runs the demo until stopped (or `rounds` rounds).
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let claims = Claims {
        sub: "demo-publisher".into(),
        projects: vec![],
        publish: vec![],
        role: Some("service".into()),
        exp: now_unix() + 30 * 24 * 3600,
        nbf: None,
        iat: Some(tidings_shared::auth::now_unix()),
    };
    let token = sign_hs256(&claims, args.secret.as_bytes())?;
    let demo = Demo {
        http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
        args,
        token,
    };
    let mut round = 0;
    loop {
        round += 1;
        if let Err(e) = demo_round(&demo, round).await {
            // The gateway may be restarting: say so and go on.
            eprintln!("demo: {e:#}");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        if demo.args.rounds != 0 && round >= demo.args.rounds {
            return Ok(());
        }
    }
}

async fn demo_round(demo: &Demo, round: u32) -> anyhow::Result<()> {
    let secret = demo.args.github_secret.as_deref();
    if let Some(secret) = secret {
        let pr = pull_request("opened", 1346 + u64::from(round), "Speed up the fan-out", false);
        demo.github(secret, "pull_request", &pr).await?;
        demo.github(secret, "check_run", &check_run("tests", "in_progress", None))
            .await?;
    }
    for p in (0..=100).step_by(5) {
        let step = STEPS[(p as usize * STEPS.len() / 101).min(STEPS.len() - 1)];
        demo.progress("run-a", p, step).await?;
        // The second run is slower: it reports half as often.
        if p % 10 == 0 {
            demo.progress("run-b", p / 2 + if round % 2 == 0 { 50 } else { 0 }, step)
                .await?;
        }
        tokio::time::sleep(demo.args.step).await;
    }
    if let Some(secret) = secret {
        demo.github(secret, "check_run", &check_run("tests", "completed", Some("success")))
            .await?;
        let pr = pull_request("closed", 1346 + u64::from(round), "Speed up the fan-out", true);
        demo.github(secret, "pull_request", &pr).await?;
    }
    demo.notify(round).await
}
