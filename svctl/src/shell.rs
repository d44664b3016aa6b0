//! `svctl` with no verb: an interactive shell, as virsh's. Each line is a verb with its
//! arguments, quoted as in a POSIX shell (`help`, `help VERB`, `quit`/`exit`, and `#`
//! comments besides); errors are printed and the shell goes on. On a terminal it prompts
//! `svctl # `, edits lines and keeps their history (rustyline; `shell_history` in the store);
//! otherwise it reads a script from stdin, and ends with status 1 if any command failed.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::{Args, Out};

const PROMPT: &str = "svctl # ";

/// What one line asks for.
enum Line {
    /// Done (`true`: it succeeded).
    Ran(bool),
    Quit,
}

pub fn run(json: bool) -> ExitCode {
    let ok = if std::io::stdin().is_terminal() {
        interactive(json)
    } else {
        script(json)
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn script(json: bool) -> bool {
    let mut all_ok = true;
    for text in std::io::stdin().lock().lines() {
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                eprintln!("svctl: error: cannot read the script: {e}");
                return false;
            }
        };
        match line(&text, json) {
            Line::Ran(ok) => all_ok &= ok,
            Line::Quit => break,
        }
    }
    all_ok
}

fn interactive(json: bool) -> bool {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("svctl: cannot edit lines on this terminal ({e}): reading plain lines");
            return script(json);
        }
    };
    let history = crate::store::Store::open()
        .ok()
        .map(|s| s.dir.join("shell_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!(
        "Welcome to svctl, the splitvisor shell. Type 'help' for the verbs, 'quit' to leave.\n"
    );
    let mut last_ok = true;
    loop {
        match editor.readline(PROMPT) {
            Ok(text) => {
                if !text.trim().is_empty() {
                    let _ = editor.add_history_entry(text.as_str());
                }
                match line(&text, json) {
                    Line::Ran(ok) => last_ok = ok,
                    Line::Quit => break,
                }
            }
            // Ctrl-C: a new line, as a shell does; Ctrl-D: leave
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => break,
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    last_ok
}

fn line(text: &str, json: bool) -> Line {
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return Line::Ran(true);
    }
    let Some(words) = shlex::split(text) else {
        eprintln!("svctl: error: unbalanced quotes in {text:?}");
        return Line::Ran(false);
    };
    match words.first().map(String::as_str) {
        Some("quit" | "exit") => return Line::Quit,
        Some("help") => return Line::Ran(help(words.get(1).map(String::as_str))),
        _ => {}
    }
    let argv = std::iter::once("svctl".to_string()).chain(words);
    match Args::try_parse_from(argv) {
        Ok(Args {
            connect: Some(_), ..
        }) => {
            eprintln!("svctl: error: -c works for the whole shell: start it as `svctl -c URI`");
            Line::Ran(false)
        }
        Ok(Args {
            verb: Some(verb),
            json: asked,
            connect: None,
        }) => {
            let out = Out {
                json: json || asked,
            };
            match crate::run(verb, &out) {
                Ok(()) => Line::Ran(true),
                Err(e) => {
                    crate::report(&e, &out);
                    Line::Ran(false)
                }
            }
        }
        // only options (`--json`): nothing to run
        Ok(Args { verb: None, .. }) => Line::Ran(true),
        Err(e) => {
            let _ = e.print();
            Line::Ran(!e.use_stderr())
        }
    }
}

/// `help`: the verbs; `help VERB`: that verb's options.
fn help(verb: Option<&str>) -> bool {
    match verb {
        Some(v) => {
            if let Err(e) = Args::try_parse_from(["svctl", v, "--help"]) {
                let _ = e.print();
                return !e.use_stderr();
            }
            true
        }
        None => {
            let mut cmd = Args::command();
            println!("{}", cmd.render_help());
            println!("In this shell also: help [VERB], quit, exit.");
            true
        }
    }
}
