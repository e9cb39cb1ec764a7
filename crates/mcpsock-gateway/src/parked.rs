//! Questions of an older upstream, asked of a 2026-07-28 client.
//!
//! A server of the earlier revisions asks its client something in the middle
//! of a call with a request of its own (elicitation, sampling, roots). A
//! 2026-07-28 client takes no requests from a server: it expects the call to
//! end with an `InputRequiredResult` carrying the question, and retries the
//! call with the answer (SEP-2322). So the gateway parks the upstream call
//! (its request stays open upstream, the question unanswered) under a number,
//! answers the client with the question and a `requestState` that seals that
//! number, and on the retry opens the state, passes the answer to the parked
//! call and goes on waiting for its result (or its next question).
//!
//! The state is sealed with rmcp's `RequestStateCodec` (HMAC-SHA256) under a
//! key drawn at random when the gateway starts, bound to the method and the
//! tool, prompt or resource, and stamped with the call's deadline. It is
//! single-use: the parked call is taken out when the retry comes. A client
//! that never retries leaves a parked call behind until the call's
//! `request_timeout` ends; then it is cancelled upstream. At most
//! [`MAX_PARKED`] calls wait at once; beyond that the upstream's question is
//! refused, as it was before parking existed.

// Sampling and roots are deprecated by SEP-2577 (2026-07-28), but servers
// of the earlier revisions use them.
#![allow(deprecated)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rmcp::ErrorData;
use rmcp::model::{
    ClientResult, CreateMessageResult, ElicitResult, InputRequest, InputRequests, InputResponses,
    ListRootsResult, RequestStateCodec, RequestStateError, SealOptions, ServerRequest,
};
use tokio::sync::oneshot;

/// Most calls parked at once, over all clients.
pub(crate) const MAX_PARKED: usize = 256;

/// What marks a `requestState` as the gateway's own; any other passes to the
/// upstream untouched (an upstream of 2026-07-28 seals its own).
const STATE_PREFIX: &str = "mcpsock.";

/// The answer channel of the upstream's question.
pub(crate) type Reply = oneshot::Sender<Result<ClientResult, ErrorData>>;

/// The kinds of question a 2026-07-28 client answers in `inputResponses`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum QuestionKind {
    Elicitation,
    Sampling,
    Roots,
}

/// An upstream request turned into an input request, or the method of one
/// that is not a question a client can answer that way.
pub(crate) fn input_request(request: ServerRequest) -> Result<(QuestionKind, InputRequest), String> {
    match request {
        ServerRequest::ElicitRequest(request) => {
            Ok((QuestionKind::Elicitation, InputRequest::Elicitation(request)))
        }
        ServerRequest::CreateMessageRequest(request) => {
            Ok((QuestionKind::Sampling, InputRequest::CreateMessage(request)))
        }
        ServerRequest::ListRootsRequest(request) => {
            Ok((QuestionKind::Roots, InputRequest::ListRoots(request)))
        }
        other => Err(crate::upstream::method_of(&other)),
    }
}

/// Whether a `requestState` is one the gateway issued (or claims to be).
pub(crate) fn is_ours(request_state: Option<&str>) -> bool {
    request_state.is_some_and(|state| state.starts_with(STATE_PREFIX))
}

/// The calls waiting for their client's answer, and the key that seals
/// their numbers.
pub(crate) struct ParkedCalls<T> {
    codec: RequestStateCodec,
    next: AtomicU64,
    calls: Mutex<HashMap<u64, Parked<T>>>,
}

impl<T> std::fmt::Debug for ParkedCalls<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkedCalls").field("parked", &lock(&self.calls).len()).finish_non_exhaustive()
    }
}

/// One parked call: `call` is whatever keeps it running (the upstream
/// request, its route, its slot), `reply` answers its question.
pub(crate) struct Parked<T> {
    pub(crate) call: T,
    pub(crate) reply: Reply,
    kind: QuestionKind,
    key: String,
    binding: String,
}

/// A question ready for the client, and the number of its parked call.
pub(crate) struct Asked {
    pub(crate) id: u64,
    pub(crate) input_requests: InputRequests,
    pub(crate) request_state: String,
}

impl<T> ParkedCalls<T> {
    /// A registry with a fresh random key: states of another run of the
    /// gateway do not open.
    pub(crate) fn new() -> Self {
        let mut key = [0u8; 32];
        if let Err(error) = getrandom::fill(&mut key) {
            // Without randomness nothing else in the process works either;
            // a key no one can guess still comes from the clock and the pid.
            tracing::error!(%error, "no random key for requestState; using a weaker one");
            let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
            for (byte, seed) in key.iter_mut().zip(seed.bytes().cycle()) {
                *byte ^= seed;
            }
        }
        Self { codec: RequestStateCodec::new(key.to_vec()), next: AtomicU64::new(1), calls: Mutex::default() }
    }

    /// Parks `call` with its question, unless too many are parked (then
    /// `call` and `reply` come back). `binding` names the method and target
    /// the retry must repeat; `ttl` is what is left of the call's time.
    #[allow(clippy::result_large_err)]
    pub(crate) fn park(
        &self,
        call: T,
        question: InputRequest,
        kind: QuestionKind,
        reply: Reply,
        binding: String,
        ttl: Duration,
    ) -> Result<Asked, (T, Reply)> {
        let mut calls = lock(&self.calls);
        if calls.len() >= MAX_PARKED {
            return Err((call, reply));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let key = format!("mcpsock-{id}");
        let sealed = self
            .codec
            .seal_with(&id.to_be_bytes(), &SealOptions::new().associated_data(binding.as_bytes()).ttl(ttl));
        calls.insert(id, Parked { call, reply, kind, key: key.clone(), binding });
        Ok(Asked {
            id,
            input_requests: InputRequests::from([(key, question)]),
            request_state: format!("{STATE_PREFIX}{sealed}"),
        })
    }

    /// Drops a parked call whose time ran out (its drop cancels it
    /// upstream); says whether it was still parked.
    pub(crate) fn expire(&self, id: u64) -> bool {
        let parked = lock(&self.calls).remove(&id);
        parked.is_some()
    }

    /// Takes the call a retry's `requestState` names, with the client's
    /// answer to its question in the form the upstream expects. The error
    /// says what was wrong and what to do.
    pub(crate) fn resume(
        &self,
        request_state: &str,
        responses: Option<&InputResponses>,
        binding: &str,
    ) -> Result<(T, Reply, ClientResult), ErrorData> {
        let again = "send the request again without requestState and inputResponses";
        let sealed = request_state.strip_prefix(STATE_PREFIX).unwrap_or(request_state);
        let id = match self.codec.open_with(sealed, binding.as_bytes()) {
            Ok(bytes) => {
                bytes.try_into().map(u64::from_be_bytes).map_err(|_| RequestStateError::MalformedFormat)
            }
            Err(error) => Err(error),
        };
        let id = id.map_err(|error| {
            let why = match error {
                RequestStateError::Expired => {
                    "the requestState expired: the call it continues was given up after request_timeout".to_string()
                }
                _ => format!(
                    "the requestState was not issued by this mcpsock for this {binding}, or was altered ({error})"
                ),
            };
            ErrorData::invalid_params(format!("{why}; {again}"), None)
        })?;
        let parked = lock(&self.calls).remove(&id).ok_or_else(|| {
            ErrorData::invalid_params(
                format!("the requestState was already used, or the call it continues has ended; {again}"),
                None,
            )
        })?;
        debug_assert_eq!(parked.binding, binding);
        let answer = responses.and_then(|responses| responses.get(&parked.key)).cloned();
        let Some(answer) = answer else {
            // The call stays parked: the client may still answer it.
            let key = parked.key.clone();
            lock(&self.calls).insert(id, parked);
            return Err(ErrorData::invalid_params(
                format!("inputResponses has no answer for {key:?}, the question of this requestState"),
                None,
            ));
        };
        let answer = match parked.kind {
            QuestionKind::Elicitation => {
                serde_json::from_value::<ElicitResult>(answer).map(ClientResult::ElicitResult)
            }
            QuestionKind::Sampling => serde_json::from_value::<CreateMessageResult>(answer)
                .map(|result| ClientResult::CreateMessageResult(Box::new(result))),
            QuestionKind::Roots => {
                serde_json::from_value::<ListRootsResult>(answer).map(ClientResult::ListRootsResult)
            }
        };
        match answer {
            Ok(answer) => Ok((parked.call, parked.reply, answer)),
            Err(error) => {
                let key = parked.key.clone();
                lock(&self.calls).insert(id, parked);
                Err(ErrorData::invalid_params(
                    format!("the answer for {key:?} in inputResponses is not valid: {error}"),
                    None,
                ))
            }
        }
    }

    /// Calls parked now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.calls).len()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::{ElicitRequestParams, Request};

    fn question() -> (QuestionKind, InputRequest) {
        let params: ElicitRequestParams = serde_json::from_value(serde_json::json!({
            "mode": "form", "message": "name?", "requestedSchema": {"type": "object", "properties": {}}
        }))
        .unwrap();
        input_request(ServerRequest::ElicitRequest(Request::new(params))).unwrap()
    }

    fn park(
        calls: &ParkedCalls<&'static str>,
        binding: &str,
        ttl: Duration,
    ) -> (Asked, oneshot::Receiver<Result<ClientResult, ErrorData>>) {
        let (kind, question) = question();
        let (reply, answered) = oneshot::channel();
        let asked = calls.park("call", question, kind, reply, binding.into(), ttl).ok().unwrap();
        (asked, answered)
    }

    #[test]
    fn a_state_opens_once_for_its_own_request_and_never_when_forged_or_altered() {
        let calls = ParkedCalls::new();
        let (asked, _answered) = park(&calls, "tools/call a", Duration::from_secs(60));
        assert!(is_ours(Some(&asked.request_state)));
        let key = asked.input_requests.keys().next().unwrap().clone();
        let answer = InputResponses::from([(
            key.clone(),
            serde_json::json!({"action": "accept", "content": {"n": 1}}),
        )]);

        let other_tool = calls.resume(&asked.request_state, Some(&answer), "tools/call b").err().unwrap();
        assert!(other_tool.message.contains("was not issued by this mcpsock"), "{}", other_tool.message);
        let mut altered = asked.request_state.clone();
        altered.pop();
        altered.push('x');
        assert!(calls.resume(&altered, Some(&answer), "tools/call a").is_err());
        let forged = format!("{STATE_PREFIX}rs2.AAAA.BBBB");
        assert!(calls.resume(&forged, Some(&answer), "tools/call a").is_err());
        let unanswered = calls.resume(&asked.request_state, None, "tools/call a").err().unwrap();
        assert!(unanswered.message.contains("has no answer"), "{}", unanswered.message);

        let (call, _reply, result) =
            calls.resume(&asked.request_state, Some(&answer), "tools/call a").unwrap();
        assert_eq!(call, "call");
        assert!(matches!(result, ClientResult::ElicitResult(_)));
        let replayed = calls.resume(&asked.request_state, Some(&answer), "tools/call a").err().unwrap();
        assert!(replayed.message.contains("already used"), "{}", replayed.message);
        assert_eq!(calls.len(), 0);

        let stranger = ParkedCalls::<&str>::new();
        assert!(
            stranger.resume(&asked.request_state, Some(&answer), "tools/call a").is_err(),
            "another key opened it"
        );
    }

    #[test]
    fn an_expired_state_says_so_and_the_registry_is_bounded() {
        let calls = ParkedCalls::new();
        let (asked, _answered) = park(&calls, "tools/call a", Duration::from_millis(1));
        // The expiry is wall-clock milliseconds: wait until the clock passes it.
        let give_up = std::time::Instant::now() + Duration::from_secs(5);
        let expired = loop {
            let error = calls.resume(&asked.request_state, None, "tools/call a").err().unwrap();
            if error.message.contains("expired") || std::time::Instant::now() > give_up {
                break error;
            }
            std::thread::yield_now();
        };
        assert!(expired.message.contains("expired"), "{}", expired.message);
        assert!(calls.expire(asked.id));
        let mut held = Vec::new();
        for _ in 0..MAX_PARKED {
            held.push(park(&calls, "tools/call a", Duration::from_secs(60)));
        }
        let (kind, question) = question();
        let (reply, _answered) = oneshot::channel();
        assert!(
            calls
                .park("one more", question, kind, reply, "tools/call a".into(), Duration::from_secs(60))
                .is_err()
        );
    }
}
