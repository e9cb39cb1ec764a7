//! Semantics every backend shares. Each case is written once and run
//! against every backend by the `suite!` macro at the bottom.

use std::collections::HashSet;
use std::time::Duration;

use mcpsock_store::{Clock, NewEvent, OpenStream, Purged, SessionRecord, StoreError, is_event_id};

use crate::{Backend, retention};

const START: i64 = 1_700_000_000_000;

fn session(id: &str, owner: &str) -> SessionRecord {
    SessionRecord {
        id: id.into(),
        owner: owner.into(),
        init_params: br#"{"protocolVersion":"2025-11-25"}"#.to_vec(),
        created_at: START,
        last_seen: START,
    }
}

fn message(text: &str) -> NewEvent {
    NewEvent { message: Some(text.as_bytes().to_vec()), retry_ms: None, is_response: false }
}

fn response(text: &str) -> NewEvent {
    NewEvent { is_response: true, ..message(text) }
}

fn priming() -> NewEvent {
    NewEvent { message: None, retry_ms: Some(3000), is_response: false }
}

fn texts(events: &[mcpsock_store::StoredEvent]) -> Vec<String> {
    events.iter().map(|event| String::from_utf8(event.message.clone().unwrap_or_default()).unwrap()).collect()
}

pub(crate) async fn sessions_round_trip(backend: Backend) {
    let opened = backend.open(Clock::manual(START), retention());
    let store = &opened.store;
    store.put_session(session("s1", "uid:1000")).await.unwrap();
    let loaded = store.load_session("s1").await.unwrap().expect("the session is stored");
    assert_eq!(loaded, session("s1", "uid:1000"));
    assert_eq!(store.load_session("unknown").await.unwrap(), None);
    store.put_session(SessionRecord { owner: "api-key".into(), ..session("s1", "") }).await.unwrap();
    assert_eq!(store.load_session("s1").await.unwrap().unwrap().owner, "api-key");
    store.delete_session("s1").await.unwrap();
    assert_eq!(store.load_session("s1").await.unwrap(), None);
}

pub(crate) async fn sessions_expire_and_are_purged(backend: Backend) {
    let clock = Clock::manual(START);
    let opened = backend.open(clock.clone(), retention());
    let store = &opened.store;
    store.put_session(session("idle", "uid:1")).await.unwrap();
    store.put_session(session("busy", "uid:1")).await.unwrap();
    let first = store.append_event("stream-idle", None, priming()).await.unwrap();
    store.bind_stream(&first, "idle", b"1").await.unwrap();
    store.append_event("stream-idle", None, message("progress")).await.unwrap();
    store.put_state("idle", "log_level", b"\"debug\"".to_vec()).await.unwrap();

    clock.advance(Duration::from_secs(3000));
    store.touch_session("busy");
    // A touch never waits; a later read on the same store sees it.
    clock.advance(Duration::from_secs(700));
    assert_eq!(store.load_session("idle").await.unwrap(), None, "idle for more than the TTL");
    assert!(store.load_session("busy").await.unwrap().is_some(), "used 700 s ago");
    assert_eq!(store.replay_after("idle", &first).await.unwrap().map(|replay| replay.events.len()), Some(1));

    let purged = store.purge().await.unwrap();
    assert_eq!(purged, Purged { sessions: 1, events: 2 });
    assert_eq!(
        store.replay_after("idle", &first).await.unwrap(),
        None,
        "the expired session's events are gone"
    );
    assert!(store.load_state("idle").await.unwrap().is_empty());
    assert!(store.load_session("busy").await.unwrap().is_some());
    assert_eq!(store.purge().await.unwrap(), Purged::default());
}

pub(crate) async fn replay_is_scoped_to_stream_and_session(backend: Backend) {
    let opened = backend.open(Clock::manual(START), retention());
    let store = &opened.store;
    store.put_session(session("s1", "uid:1")).await.unwrap();
    store.put_session(session("s2", "uid:1")).await.unwrap();
    let a0 = store.append_event("a", None, priming()).await.unwrap();
    store.bind_stream(&a0, "s1", b"7").await.unwrap();
    let b0 = store.append_event("b", None, priming()).await.unwrap();
    store.bind_stream(&b0, "s2", b"8").await.unwrap();
    let a1 = store.append_event("a", None, message("a1")).await.unwrap();
    store.append_event("b", None, message("b1")).await.unwrap();
    store.append_event("a", None, message("a2")).await.unwrap();
    store.append_event("a", None, response("a3")).await.unwrap();

    let replay = store.replay_after("s1", &a0).await.unwrap().unwrap();
    assert_eq!(texts(&replay.events), ["a1", "a2", "a3"]);
    assert!(!replay.standalone);
    assert_eq!(replay.events[0].id, a1, "replayed events keep their ids");
    let replay = store.replay_after("s1", &a1).await.unwrap().unwrap();
    assert_eq!(texts(&replay.events), ["a2", "a3"], "strictly after the given event");
    assert_eq!(store.replay_after("s2", &a0).await.unwrap(), None, "another session's event");
    assert_eq!(store.replay_after("s1", "00000000000000000000000000000000").await.unwrap(), None);
    let replay = store.replay_after("s2", &b0).await.unwrap().unwrap();
    assert_eq!(texts(&replay.events), ["b1"]);
    let last = replay.events[0].id.clone();
    assert!(store.replay_after("s2", &last).await.unwrap().unwrap().events.is_empty());
}

pub(crate) async fn event_ids_are_random_and_unique(backend: Backend) {
    let opened = backend.open(Clock::manual(START), retention());
    let store = &opened.store;
    let mut ids = HashSet::new();
    for _ in 0..500 {
        let id = store.append_event("s", None, message("x")).await.unwrap();
        assert!(is_event_id(&id), "{id}");
        assert!(ids.insert(id), "event ids repeat");
    }
    // Ids carry 64 random bits: the same position with another tag is
    // not an id of this store.
    store.put_session(session("s1", "uid:1")).await.unwrap();
    let first = store.append_event("t", Some("s1"), message("a")).await.unwrap();
    store.append_event("t", Some("s1"), message("b")).await.unwrap();
    assert!(store.replay_after("s1", &first).await.unwrap().is_some());
    let forged = format!(
        "{}{}",
        &first[..16],
        if &first[16..] == "0000000000000000" { "1111111111111111" } else { "0000000000000000" }
    );
    assert_eq!(store.replay_after("s1", &forged).await.unwrap(), None, "a forged tag finds nothing");
    let tags: HashSet<&str> = ids.iter().map(|id| &id[16..]).collect();
    assert_eq!(tags.len(), ids.len(), "random tags repeat");
    assert!(!is_event_id("0"), "rmcp's own ids are not ours");
    assert!(!is_event_id(&"a".repeat(10_000)));
}

pub(crate) async fn standalone_streams_bind_on_first_event(backend: Backend) {
    let opened = backend.open(Clock::manual(START), retention());
    let store = &opened.store;
    store.put_session(session("s1", "uid:1")).await.unwrap();
    let first = store.append_event("common", Some("s1"), message("n1")).await.unwrap();
    store.append_event("common", Some("s1"), message("n2")).await.unwrap();
    let replay = store.replay_after("s1", &first).await.unwrap().unwrap();
    assert!(replay.standalone);
    assert_eq!(texts(&replay.events), ["n2"]);
    assert!(store.open_streams().await.unwrap().is_empty(), "a standalone stream never waits for a response");
}

pub(crate) async fn open_streams_are_those_without_a_response(backend: Backend) {
    let clock = Clock::manual(START);
    let opened = backend.open(clock.clone(), retention());
    let store = &opened.store;
    store.put_session(session("live", "uid:1")).await.unwrap();
    let done = store.append_event("done", None, priming()).await.unwrap();
    store.bind_stream(&done, "live", b"1").await.unwrap();
    store.append_event("done", None, response("r")).await.unwrap();
    let cut = store.append_event("cut", None, priming()).await.unwrap();
    store.append_event("cut", None, message("progress")).await.unwrap();
    store.bind_stream(&cut, "live", br#""req-2""#).await.unwrap();
    // Never bound: no request to answer.
    store.append_event("unbound", None, priming()).await.unwrap();

    let open = store.open_streams().await.unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].request_id, br#""req-2""#.to_vec());
    // The key a store gives an open stream appends to it, as a later
    // process (which never saw the stream's name) does.
    let OpenStream { stream, .. } = &open[0];
    let error = store.append_event(stream, None, response("restarted")).await.unwrap();
    assert!(store.open_streams().await.unwrap().is_empty());
    let replay = store.replay_after("live", &cut).await.unwrap().unwrap();
    assert_eq!(texts(&replay.events), ["progress", "restarted"]);
    assert_eq!(replay.events[1].id, error);

    // A stream of an expired session is nobody's business any more.
    let late = store.append_event("late", None, priming()).await.unwrap();
    store.bind_stream(&late, "live", b"3").await.unwrap();
    clock.advance(Duration::from_secs(3601));
    assert!(store.open_streams().await.unwrap().is_empty());
}

/// A busy session's old answered requests lose all their events to the
/// cap; with their answers gone they must not look cut short (a restart
/// would append an error to each of them).
pub(crate) async fn streams_emptied_by_the_cap_are_not_open(backend: Backend) {
    let opened = backend.open(Clock::manual(START), retention().max_events_per_session(2));
    let store = &opened.store;
    store.put_session(session("busy", "uid:1")).await.unwrap();
    for request in 1..=3 {
        let stream = format!("request-{request}");
        let priming_id = store.append_event(&stream, None, priming()).await.unwrap();
        store.bind_stream(&priming_id, "busy", request.to_string().as_bytes()).await.unwrap();
        store.append_event(&stream, None, response("answer")).await.unwrap();
    }
    store.purge().await.unwrap();
    let open = store.open_streams().await.unwrap();
    assert!(open.is_empty(), "{open:?}");
}

pub(crate) async fn binding_is_first_come(backend: Backend) {
    let opened = backend.open(Clock::manual(START), retention());
    let store = &opened.store;
    store.put_session(session("s1", "uid:1")).await.unwrap();
    store.put_session(session("s2", "uid:2")).await.unwrap();
    let first = store.append_event("a", None, priming()).await.unwrap();
    store.bind_stream(&first, "s1", b"1").await.unwrap();
    store.bind_stream(&first, "s2", b"2").await.unwrap();
    store.append_event("a", None, message("m")).await.unwrap();
    assert!(store.replay_after("s1", &first).await.unwrap().is_some());
    assert_eq!(store.replay_after("s2", &first).await.unwrap(), None, "a stream cannot be rebound");
    store.bind_stream("ffffffffffffffffffffffffffffffff", "s1", b"1").await.unwrap();
}

/// `open_stream` is `append_event` of the first event and `bind_stream` in
/// one step: the stream is the session's, answers its request, replays
/// only to its session, and counts under the session's cap.
pub(crate) async fn an_opened_stream_is_bound_to_its_session_and_request(backend: Backend) {
    let opened = backend.open(Clock::manual(START), retention().max_events_per_session(50));
    let store = &opened.store;
    store.put_session(session("s1", "uid:1")).await.unwrap();
    store.put_session(session("s2", "uid:2")).await.unwrap();
    let open = |stream: String, request: &[u8]| {
        let (id, binding) = store.clone().open_stream(&stream, "s1", request.to_vec(), priming()).unwrap();
        async move {
            if let Some(binding) = binding {
                binding.await.unwrap();
            }
            id
        }
    };
    let first = open("call".into(), br#""req-1""#).await;
    assert!(is_event_id(&first), "{first}");
    store.append_event("call", None, message("progress")).await.unwrap();
    let streams = store.open_streams().await.unwrap();
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0].request_id, br#""req-1""#.to_vec());
    assert_eq!(texts(&store.replay_after("s1", &first).await.unwrap().unwrap().events), ["progress"]);
    assert_eq!(store.replay_after("s2", &first).await.unwrap(), None, "another session's stream");
    store.append_event("call", None, response("answer")).await.unwrap();
    assert!(store.open_streams().await.unwrap().is_empty(), "answered");

    let mut ids = Vec::new();
    for index in 0..1100 {
        ids.push(open(format!("request-{index}"), b"1").await);
    }
    let mut kept = 0;
    for id in &ids {
        kept += usize::from(store.replay_after("s1", id).await.unwrap().is_some());
    }
    // As in `the_session_cap_holds_between_cleanups`.
    assert!(kept <= 50 + 1 + (1100 - 1023), "{kept} of 1100 events kept for a cap of 50");
    assert!(store.replay_after("s1", &ids[1099]).await.unwrap().is_some(), "the newest stay");
}

pub(crate) async fn state_round_trip(backend: Backend) {
    let opened = backend.open(Clock::manual(START), retention());
    let store = &opened.store;
    store.put_session(session("s1", "uid:1")).await.unwrap();
    store.put_state("s1", "subscriptions", b"[]".to_vec()).await.unwrap();
    store.put_state("s1", "log_level", b"\"info\"".to_vec()).await.unwrap();
    store.put_state("s1", "log_level", b"\"debug\"".to_vec()).await.unwrap();
    assert_eq!(
        store.load_state("s1").await.unwrap(),
        [("log_level".to_string(), b"\"debug\"".to_vec()), ("subscriptions".to_string(), b"[]".to_vec())]
    );
    assert!(store.load_state("s2").await.unwrap().is_empty());
    store.delete_session("s1").await.unwrap();
    assert!(store.load_state("s1").await.unwrap().is_empty());
}

pub(crate) async fn retention_bounds_events(backend: Backend) {
    let clock = Clock::manual(START);
    let limits = retention().event_max_age(Duration::from_secs(60)).max_events_per_session(3);
    let opened = backend.open(clock.clone(), limits);
    let store = &opened.store;
    store.put_session(session("s1", "uid:1")).await.unwrap();
    let first = store.append_event("a", Some("s1"), message("old")).await.unwrap();
    clock.advance(Duration::from_secs(61));
    // Five events over two streams: no stream is over the cap of 3, the
    // session is.
    let mut kept = Vec::new();
    for index in 0..5 {
        let stream = if index % 2 == 0 { "b" } else { "c" };
        kept.push(store.append_event(stream, Some("s1"), message(&format!("m{index}"))).await.unwrap());
    }
    // A backend may enforce the cap as events arrive or at cleanup; after a
    // cleanup the outcome is the same: one event too old, two over the cap.
    let purged = store.purge().await.unwrap();
    assert_eq!(purged.sessions, 0);
    assert!(purged.events <= 3, "{purged:?}");
    assert_eq!(store.replay_after("s1", &first).await.unwrap(), None);
    assert_eq!(store.replay_after("s1", &kept[0]).await.unwrap(), None, "the oldest over the cap go first");
    assert_eq!(store.replay_after("s1", &kept[1]).await.unwrap(), None);
    let replay = store.replay_after("s1", &kept[2]).await.unwrap().unwrap();
    assert_eq!(texts(&replay.events), ["m4"]);
    let replay = store.replay_after("s1", &kept[3]).await.unwrap().unwrap();
    assert!(replay.events.is_empty());
}

/// How many of `ids` (in append order) are still stored: the first one that
/// replays marks where the kept events begin.
async fn kept(store: &dyn mcpsock_store::Store, session: &str, ids: &[String]) -> usize {
    for (index, id) in ids.iter().enumerate() {
        if store.replay_after(session, id).await.unwrap().is_some() {
            return ids.len() - index;
        }
    }
    0
}

pub(crate) async fn a_growing_stream_is_bounded_as_it_grows(backend: Backend) {
    // By count: at most the cap, plus the slack a backend may batch trims by.
    let opened = backend.open(Clock::manual(START), retention().max_events_per_session(100));
    let store = &opened.store;
    let mut ids = Vec::new();
    for index in 0..1000 {
        ids.push(store.append_event("flood", Some("s1"), message(&format!("{index:0100}"))).await.unwrap());
    }
    let kept_by_count = kept(store.as_ref(), "s1", &ids).await;
    assert!((50..=126).contains(&kept_by_count), "{kept_by_count} events kept for a cap of 100");

    // By size: 1000 events of 1 KiB against a 64 KiB budget.
    let opened = backend.open(Clock::manual(START), retention().max_stream_bytes(64 * 1024));
    let store = &opened.store;
    let mut ids = Vec::new();
    for index in 0..1000 {
        ids.push(store.append_event("flood", Some("s1"), message(&format!("{index:01024}"))).await.unwrap());
    }
    let kept_by_size = kept(store.as_ref(), "s1", &ids).await;
    assert!((32..=81).contains(&kept_by_size), "{kept_by_size} events of 1 KiB kept for a 64 KiB budget");
    let replay = store.replay_after("s1", &ids[998]).await.unwrap().unwrap();
    assert_eq!(replay.events.len(), 1, "the newest events are the ones kept");
}

pub(crate) async fn the_session_cap_holds_between_cleanups(backend: Backend) {
    // Many short request streams, as every tools/call makes: no stream is
    // over the cap, the session is, and no cleanup runs.
    let opened = backend.open(Clock::manual(START), retention().max_events_per_session(50));
    let store = &opened.store;
    store.put_session(session("s1", "uid:1")).await.unwrap();
    let mut ids = Vec::new();
    for index in 0..1500 {
        let stream = format!("request-{index}");
        let first = store.append_event(&stream, None, priming()).await.unwrap();
        store.bind_stream(&first, "s1", b"1").await.unwrap();
        ids.push(first);
    }
    let mut kept = 0;
    for id in &ids {
        kept += usize::from(store.replay_after("s1", id).await.unwrap().is_some());
    }
    // Trimmed every 1 024 appends: at most the cap, the event being bound
    // at the trim, and what came since (without the trim: all 1 500).
    assert!(kept <= 50 + 1 + (1500 - 1023), "{kept} of 1500 events kept for a cap of 50");
    assert!(store.replay_after("s1", &ids[1499]).await.unwrap().is_some(), "the newest stay");
}

pub(crate) async fn closed_store_refuses_work(backend: Backend) {
    let opened = backend.open(Clock::manual(START), retention());
    let store = &opened.store;
    store.put_session(session("s1", "uid:1")).await.unwrap();
    store.close().await.unwrap();
    assert!(matches!(store.load_session("s1").await, Err(StoreError::Closed)));
    assert!(matches!(store.append_event("a", None, priming()).await, Err(StoreError::Closed)));
    store.touch_session("s1");
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test] async fn $case() { super::$case(crate::Backend::Memory).await })*
        }
        mod sqlite {
            $(#[tokio::test] async fn $case() { super::$case(crate::Backend::Sqlite).await })*
        }
        mod sqlite_encrypted {
            $(#[tokio::test] async fn $case() { super::$case(crate::Backend::SqliteEncrypted).await })*
        }
    };
}

suite!(
    sessions_round_trip,
    sessions_expire_and_are_purged,
    replay_is_scoped_to_stream_and_session,
    event_ids_are_random_and_unique,
    standalone_streams_bind_on_first_event,
    open_streams_are_those_without_a_response,
    streams_emptied_by_the_cap_are_not_open,
    binding_is_first_come,
    an_opened_stream_is_bound_to_its_session_and_request,
    state_round_trip,
    retention_bounds_events,
    a_growing_stream_is_bounded_as_it_grows,
    the_session_cap_holds_between_cleanups,
    closed_store_refuses_work,
);
