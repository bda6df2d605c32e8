//! The command line's own checks (the behaviour is tested through the binary in tests/).
use super::*;
use clap::CommandFactory;

/// Every subcommand and every argument, hidden ones included, explains itself in `--help`.
#[test]
fn every_subcommand_and_argument_has_help() {
    fn walk(cmd: &clap::Command, path: &str, blank: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            if arg
                .get_help()
                .is_none_or(|h| h.to_string().trim().is_empty())
            {
                blank.push(format!("{path} --{id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            let p = format!("{path} {}", sub.get_name());
            if sub.get_name() != "help"
                && sub
                    .get_about()
                    .is_none_or(|h| h.to_string().trim().is_empty())
            {
                blank.push(p.clone());
            }
            walk(sub, &p, blank);
        }
    }
    let cmd = Cli::command();
    cmd.clone().debug_assert();
    let mut blank = Vec::new();
    walk(&cmd, "seibo-gate", &mut blank);
    assert!(blank.is_empty(), "without help text: {blank:#?}");
    assert!(
        cmd.get_after_help()
            .is_some_and(|h| h.to_string().contains("78  config")),
        "the exit statuses follow --help"
    );
}
