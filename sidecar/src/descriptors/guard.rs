//! What prost-reflect 0.16.5 cannot be given without crashing, refused first with an error.
//!
//! Descriptors come from a file the user points at or from the upstream's reflection service:
//! outside input, which must end in a clear start-up error, never a crash. Fuzzing the loading
//! path found two shapes that crash prost-reflect while it builds a pool:
//! - a `syntax` other than "proto2" and "proto3", "" included (editions files are lowered
//!   before they get here): it panics building its own "unknown syntax" error;
//! - a cycle of public imports (a file that publicly imports itself is enough): its resolution
//!   recurses until the stack overflows, which aborts the process; nothing can catch that.
//!
//! Both are checked here on the decoded files, and every call into prost-reflect's pool
//! building also runs under [`guarded`], so a panic not yet known becomes an error too.

use std::collections::HashMap;

use prost_reflect::{
    DescriptorPool,
    prost_types::{FileDescriptorProto, FileDescriptorSet},
};

/// A pool from `files`, or why they cannot make one.
pub fn pool(files: Vec<FileDescriptorProto>) -> Result<DescriptorPool, String> {
    check(&files)?;
    guarded(|| {
        DescriptorPool::from_file_descriptor_set(FileDescriptorSet { file: files })
            .map_err(|e| e.to_string())
    })
}

/// The shapes above, named in the error.
pub fn check(files: &[FileDescriptorProto]) -> Result<(), String> {
    for f in files {
        // Absent means proto2; present, it must be one of the two (even "" panics).
        if let Some(syntax) = &f.syntax
            && !matches!(syntax.as_str(), "proto2" | "proto3")
        {
            return Err(format!(
                "file {:?} has syntax {syntax:?}; valid: proto2, proto3, editions",
                f.name()
            ));
        }
    }
    match public_import_cycle(files) {
        Some(cycle) => Err(format!(
            "files import each other publicly in a cycle: {}",
            cycle.join(" → ")
        )),
        None => Ok(()),
    }
}

/// A cycle in the graph of public imports between `files` (by name), as the names along it.
fn public_import_cycle(files: &[FileDescriptorProto]) -> Option<Vec<String>> {
    let mut index = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        index.entry(f.name()).or_insert(i);
    }
    let edges: Vec<Vec<usize>> = files
        .iter()
        .map(|f| {
            f.public_dependency
                .iter()
                .filter_map(|&p| usize::try_from(p).ok())
                .filter_map(|p| f.dependency.get(p))
                .filter_map(|name| index.get(name.as_str()).copied())
                .collect()
        })
        .collect();
    // Iterative depth-first search (the graph is outside input: no recursion on it). Colours:
    // 0 not seen, 1 on the current path, 2 done.
    let mut colour = vec![0u8; files.len()];
    for start in 0..files.len() {
        if colour[start] != 0 {
            continue;
        }
        let mut path = vec![(start, 0usize)];
        colour[start] = 1;
        while let Some((node, next)) = path.last_mut() {
            let node = *node;
            match edges[node].get(*next) {
                Some(&to) => {
                    *next += 1;
                    match colour[to] {
                        0 => {
                            colour[to] = 1;
                            path.push((to, 0));
                        }
                        1 => {
                            let from = path.iter().position(|(n, _)| *n == to).unwrap_or(0);
                            let mut names: Vec<String> = path[from..]
                                .iter()
                                .map(|(n, _)| files[*n].name().to_owned())
                                .collect();
                            names.push(files[to].name().to_owned());
                            return Some(names);
                        }
                        _ => {}
                    }
                }
                None => {
                    colour[node] = 2;
                    path.pop();
                }
            }
        }
    }
    None
}

/// What an error from a panic inside prost-reflect begins with: a shape `check` does not know
/// yet (the fuzz target and the corpus replay treat it as a finding).
pub const PANICKED: &str = "the descriptor library failed on it";

/// Runs a prost-reflect call that may panic on a malformed descriptor instead of returning an
/// error; a panic becomes that error. (The default panic hook still prints it first.)
pub fn guarded<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(format!("{PANICKED}: {why}"))
    })
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn load(set: &[u8]) -> Result<DescriptorPool, String> {
        let set = FileDescriptorSet::decode(set).map_err(|e| e.to_string())?;
        pool(set.file)
    }

    #[test]
    fn the_shapes_that_crashed_prost_reflect_are_errors() {
        // Found by the descriptor fuzz target (docs/fuzzing.md): one file with syntax "x"
        // (a panic), and a file `a` that publicly imports `a` (a stack overflow).
        let err = load(&[0x0a, 0x03, 0x62, 0x01, 0x78]).expect_err("unknown syntax");
        assert!(
            err.contains("syntax \"x\"; valid: proto2, proto3, editions"),
            "{err}"
        );
        let err =
            load(&[0x0a, 0x08, 0x0a, 0x01, 0x61, 0x1a, 0x01, 0x61, 0x50, 0x00]).expect_err("cycle");
        assert!(err.contains("in a cycle: a → a"), "{err}");
        let err = load(&[0x0a, 0x04, 0x1a, 0x00, 0x50, 0x00]).expect_err("unnamed cycle");
        assert!(err.contains("cycle"), "{err}");
        // An empty syntax, present, panics as any unknown one does (found by the next run).
        let err = load(&[0x0a, 0x02, 0x62, 0x00]).expect_err("empty syntax");
        assert!(err.contains("syntax \"\""), "{err}");
    }

    #[test]
    fn a_longer_cycle_is_named_and_a_chain_is_fine() {
        let file = |name: &str, deps: &[&str], public: &[i32]| FileDescriptorProto {
            name: Some(name.into()),
            dependency: deps.iter().map(|d| (*d).to_owned()).collect(),
            public_dependency: public.to_vec(),
            syntax: Some("proto3".into()),
            ..Default::default()
        };
        let cycle = vec![
            file("a", &["b"], &[0]),
            file("b", &["c"], &[0]),
            file("c", &["a"], &[0]),
        ];
        assert_eq!(
            check(&cycle),
            Err("files import each other publicly in a cycle: a → b → c → a".into())
        );
        let chain = vec![
            file("c", &[], &[]),
            file("b", &["c"], &[0]),
            file("a", &["b"], &[0]),
        ];
        assert!(pool(chain).is_ok());
        // A plain (not public) self-import is prost-reflect's to judge; it does not crash.
        assert!(check(&[file("a", &["a"], &[])]).is_ok());
    }
}
