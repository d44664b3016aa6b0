//! CPU lists as virsh and the kernel write them (`0-2,4`): the domain's `vcpupin` and
//! `svctl vcpupin`.

/// `0-2,4` → [0, 1, 2, 4] (sorted, each once); every CPU below `limit`.
pub fn parse_cpulist(list: &str, limit: usize) -> Result<Vec<usize>, String> {
    let bad = || format!("CPU list {list:?}: use numbers and ranges, e.g. 0-2,4");
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: usize = a.trim().parse().map_err(|_| bad())?;
        let b: usize = b.trim().parse().map_err(|_| bad())?;
        if a > b {
            return Err(bad());
        }
        if b >= limit {
            return Err(format!(
                "CPU list {list:?}: the host has CPUs 0-{} only",
                limit - 1
            ));
        }
        cpus.extend(a..=b);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// [0, 1, 2, 4] → `0-2,4`.
pub fn format_cpulist(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(match j == i {
            true => cpus[i].to_string(),
            false => format!("{}-{}", cpus[i], cpus[j]),
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_print_back() {
        assert_eq!(parse_cpulist("0-2,4", 8), Ok(vec![0, 1, 2, 4]));
        assert_eq!(parse_cpulist("3,1,1-2", 8), Ok(vec![1, 2, 3]));
        assert_eq!(format_cpulist(&[0, 1, 2, 4, 6, 7]), "0-2,4,6-7");
        assert_eq!(format_cpulist(&[5]), "5");
        for bad in ["", "a", "2-1", "1-", "1,,2"] {
            assert!(parse_cpulist(bad, 8).is_err(), "{bad:?}");
        }
        let e = parse_cpulist("0-8", 8).expect_err("past the host");
        assert!(e.contains("the host has CPUs 0-7 only"), "{e}");
    }
}
