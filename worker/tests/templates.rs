//! The worker's template cache against a real nats-server: templates are read from memory
//! once the bucket's watch has delivered them, and every change (update, deletion) reaches
//! the cache.

use std::time::Duration;

use futures::StreamExt as _;
use tidings_shared::notify::names::TEMPLATES_BUCKET;
use tidings_shared::store::Store;
use tidings_shared::template::{Template, TitleBody};
use tidings_tests::{NatsServer, eventually};
use tidings_worker::templates::TemplateCache;

fn titled(title: &str) -> Template {
    Template {
        in_app: Some(TitleBody {
            title: title.into(),
            body: "b".into(),
        }),
        ..Default::default()
    }
}

/// Whether reading `name` through `cache` asked JetStream: the direct gets on the
/// templates' stream are watched on `reads`, and a read of `marker` (never cached, as it
/// does not exist) shows where this read's requests end.
async fn read_asks_jetstream(cache: &TemplateCache, reads: &mut async_nats::Subscriber, name: &str) -> bool {
    cache.get(name).await.unwrap();
    cache.get("marker").await.unwrap();
    let mut asked = false;
    loop {
        let request = tokio::time::timeout(Duration::from_secs(10), reads.next())
            .await
            .expect("the marker's read in time")
            .expect("subscription open");
        if request.subject.as_str().ends_with(".marker") {
            return asked;
        }
        asked |= request.subject.as_str().ends_with(&format!(".{name}"));
    }
}

#[tokio::test]
async fn templates_come_from_memory_and_follow_every_change() {
    let nats = NatsServer::start().await.unwrap();
    let client = nats.client().await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let writer = Store::open(js.clone(), 1).await.unwrap();
    writer.put_template("early", &titled("before")).await.unwrap();
    let cached = TemplateCache::spawn(Store::open(js.clone(), 1).await.unwrap().templates_bucket().clone());
    let mut reads = client
        .subscribe(format!("$JS.API.DIRECT.GET.KV_{TEMPLATES_BUCKET}.>"))
        .await
        .unwrap();
    client.flush().await.unwrap();

    writer.put_template("welcome", &titled("v1")).await.unwrap();
    assert_eq!(cached.get("welcome").await.unwrap(), Some(titled("v1").into()));
    // Once the watch has delivered them, templates are served from memory: those written
    // before it started as well as after.
    for name in ["early", "welcome"] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while read_asks_jetstream(&cached, &mut reads, name).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: never served from memory"
            );
        }
    }
    assert_eq!(cached.get("early").await.unwrap(), Some(titled("before").into()));

    // An update reaches the cache without anyone reading it again.
    writer.put_template("welcome", &titled("v2")).await.unwrap();
    eventually(Duration::from_secs(10), "the update in the cache", || async {
        let t = cached.get("welcome").await.unwrap()?;
        (t.in_app.as_ref()?.title == "v2").then_some(())
    })
    .await;
    assert!(!read_asks_jetstream(&cached, &mut reads, "welcome").await);

    // So does a deletion.
    let kv = js.get_key_value(TEMPLATES_BUCKET).await.unwrap();
    kv.delete("welcome").await.unwrap();
    eventually(Duration::from_secs(10), "the deletion in the cache", || async {
        cached.get("welcome").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(!read_asks_jetstream(&cached, &mut reads, "welcome").await);

    // A template is found at once, even before the watch delivers it (read directly).
    writer.put_template("fresh", &titled("new")).await.unwrap();
    assert_eq!(cached.get("fresh").await.unwrap(), Some(titled("new").into()));
    // And something that is not a template, written around the API, is an error, not absent.
    kv.put("broken", "not json".into()).await.unwrap();
    assert!(cached.get("broken").await.is_err());
}
