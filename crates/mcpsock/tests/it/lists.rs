//! The gateway's own cursors: long lists come in pages of `list_page_size`,
//! clients that follow cursors get everything, and a cursor that is bogus or
//! outlived its list is refused with -32602.

use serde_json::{Value, json};

use crate::support::*;

const EXTRA_TOOLS: usize = 250;
/// The fake upstream's own tools, besides the extra ones.
const OWN_TOOLS: usize = 11;

fn names(page: &Value) -> Vec<String> {
    page["tools"].as_array().unwrap().iter().map(|tool| tool["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn long_lists_come_in_pages_that_clients_follow_and_stale_cursors_are_refused() {
    let sandbox = Sandbox::new();
    let server = |disabled: &[&str]| json!({"command": fake_upstream(), "args": ["--extra-tools", EXTRA_TOOLS.to_string()], "disabled_tools": disabled});
    let config = sandbox.write_config(&json!({"mcpServers": {"fake": server(&[])}, "list_page_size": 100}));
    let daemon = Daemon::start(&sandbox, &config);
    let total = OWN_TOOLS + EXTRA_TOOLS;
    let (status, body) = http_get(&daemon.socket, "/config").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["list_page_size"], 100, "{body}");

    // rmcp's list_all_tools, behind `mcpsock tools`, follows the cursors.
    let output = sandbox.client(&["tools", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let listed: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), total);

    // By hand, in both eras: three pages, in order, each name once.
    let session = McpSession::open(&daemon.socket);
    for era in ["legacy", "2026-07-28"] {
        let list = |cursor: Option<&str>| {
            let params = match cursor {
                Some(cursor) => json!({"cursor": cursor}),
                None => json!({}),
            };
            match era {
                "legacy" => session.request("tools/list", params).unwrap(),
                _ => modern_request(&daemon.socket, "tools/list", params)["result"].clone(),
            }
        };
        let mut pages = vec![list(None)];
        while let Some(cursor) = pages.last().unwrap()["nextCursor"].as_str().map(str::to_string) {
            pages.push(list(Some(&cursor)));
        }
        let sizes: Vec<usize> = pages.iter().map(|page| names(page).len()).collect();
        assert_eq!(sizes, [100, 100, total - 200], "{era}");
        let all: Vec<String> = pages.iter().flat_map(names).collect();
        let expected: Vec<String> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|tool| tool["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(all, expected, "{era}: pages differ from the whole list");
    }

    let bogus = session.request("tools/list", json!({"cursor": "page-2"})).unwrap_err();
    assert!(bogus.contains("-32602") && bogus.contains("is not one mcpsock issued"), "{bogus}");
    let first = session.request("tools/list", json!({})).unwrap();
    let cursor = first["nextCursor"].as_str().unwrap().to_string();
    let wrong_list = session.request("prompts/list", json!({"cursor": cursor})).unwrap_err();
    assert!(wrong_list.contains("belongs to the tools list"), "{wrong_list}");

    // The list changes underneath (a reload hides a tool): the old cursor
    // would skip one, so it is refused.
    rewrite_config(&config, &json!({"mcpServers": {"fake": server(&["extra_0000"])}, "list_page_size": 100}));
    let reload = sandbox.client(&["reload"]);
    assert!(reload.status.success(), "{}", stderr(&reload));
    wait_until("the reload hides extra_0000", || {
        session
            .request("tools/list", json!({}))
            .is_ok_and(|page| !names(&page).contains(&"fake__extra_0000".into()))
    });
    let stale = session.request("tools/list", json!({"cursor": cursor})).unwrap_err();
    assert!(stale.contains("-32602") && stale.contains("the tools list changed"), "{stale}");
    assert!(daemon.stop().success());
}
