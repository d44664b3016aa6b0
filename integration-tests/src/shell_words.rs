//! Turning a command's words into the shell script the sandbox runs in L1, so that
//! `sv-sandbox sh -c 'test -c /dev/kvm && echo ok'` runs exactly that argv (each word quoted
//! for `sh`), while a single word stays a shell command line of its own (the benchmark and run
//! scripts pass whole scripts as one argument: `sv-sandbox 'a && b'`).

/// One word quoted for POSIX `sh`: left bare when it holds only characters the shell never
/// interprets, otherwise single-quoted (an embedded `'` becomes `'\''`).
pub fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The script for COMMAND's words: one word is a command line, several are an argv.
pub fn script(words: &[String]) -> String {
    match words {
        [line] => line.clone(),
        _ => words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// What `sh` makes of the script: the argv it runs, read back with printf.
    fn argv_seen_by_sh(words: &[&str]) -> Vec<String> {
        let mut all = vec!["printf".to_string(), "%s\\0".to_string()];
        all.extend(words.iter().map(|w| w.to_string()));
        let out = Command::new("sh")
            .arg("-c")
            .arg(script(&all))
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        text.split_terminator('\0').map(str::to_string).collect()
    }

    #[test]
    fn every_word_reaches_the_command_unchanged() {
        let words = [
            "-c",
            "test -c /dev/kvm && echo ok",
            "it's",
            "",
            "$HOME `id` \\n \"q\"",
            "*",
            "a\nb",
            "plain-word_1.2=x",
        ];
        assert_eq!(argv_seen_by_sh(&words), words);
    }

    #[test]
    fn sh_dash_c_keeps_its_script_whole() {
        let words: Vec<String> = ["sh", "-c", "test -d / && echo ok"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let out = Command::new("sh")
            .arg("-c")
            .arg(script(&words))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    }

    #[test]
    fn one_word_is_a_command_line() {
        assert_eq!(script(&["a && b | c".to_string()]), "a && b | c");
        assert_eq!(quote("sv-kvm-smoke"), "sv-kvm-smoke");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote(""), "''");
    }
}
