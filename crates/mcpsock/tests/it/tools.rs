//! Tool control: which upstream tools are offered and under what names
//! (`prefix`, `enabled_tools`, `disabled_tools`, collisions).

use serde_json::{Value, json};

use crate::support::*;

#[test]
fn tools_are_filtered_and_colliding_names_told_apart() {
    let sandbox = Sandbox::new();
    let received = sandbox.path().join("received.jsonl");
    let config = sandbox.write_config(&json!({"mcpServers": {
        "a": {"command": demo_server(), "prefix": "", "enabled_tools": ["echo", "add"]},
        "b": {"command": fake_upstream(), "prefix": "", "env": {"FAKE_UPSTREAM_LOG": received},
              "disabled_tools": ["garbage", "hang", "crash", "flood", "ansi", "pid", "remember", "recall", "ask"]},
        "c": {"command": demo_server(), "prefix": "third", "disabled_tools": ["add", "now"]}
    }}));
    let daemon = Daemon::start(&sandbox, &config);
    let output = sandbox.client(&["tools", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let tools: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let names: Vec<&str> =
        tools.as_array().unwrap().iter().map(|tool| tool["name"].as_str().unwrap()).collect();
    // Server-name order; the second `echo` (from b) gets a suffix. A
    // disabled list hides only what it names: b's `slow` and c's
    // `countdown` stay.
    assert_eq!(names, ["add", "echo", "echo_2", "slow", "third__countdown", "third__echo"]);

    let first = sandbox.client(&["call", "echo", "--arg", "text=to a"]);
    assert_eq!(stdout(&first).trim(), "to a", "{}", stderr(&first));
    assert!(!std::fs::read_to_string(&received).unwrap_or_default().contains("to a"));
    let second = sandbox.client(&["call", "echo_2", "--arg", "text=to b"]);
    assert_eq!(stdout(&second).trim(), "to b", "{}", stderr(&second));
    assert!(
        std::fs::read_to_string(&received).unwrap().contains(r#""name":"echo""#),
        "b got the call under its own name"
    );

    for hidden in ["now", "hang", "third__add"] {
        let refused = sandbox.client(&["call", hidden]);
        assert!(!refused.status.success(), "{hidden} is not offered");
        assert!(
            stderr(&refused).contains(&format!("offers no tool named {hidden:?}")),
            "{}",
            stderr(&refused)
        );
    }
    assert!(daemon.stop().success());
}
