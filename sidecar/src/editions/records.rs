use super::wire::Record;

/// The last occurrence of a singular field, which is the one that counts.
pub(super) fn last<'r, 'a>(records: &'r [Record<'a>], number: u32) -> Option<&'r Record<'a>> {
    records.iter().rev().find(|r| r.number == number)
}

pub(super) fn payloads<'a>(records: &[Record<'a>], number: u32) -> Result<Vec<&'a [u8]>, String> {
    records
        .iter()
        .filter(|r| r.number == number)
        .map(Record::bytes)
        .collect()
}

pub(super) fn name_of(records: &[Record<'_>], number: u32) -> Result<String, String> {
    match last(records, number) {
        Some(record) => utf8(record.bytes()?, "name"),
        None => Ok(String::new()),
    }
}

pub(super) fn utf8(bytes: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| format!("{what} {:?} is not UTF-8", String::from_utf8_lossy(bytes)))
}

pub(super) fn join(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_owned()
    } else {
        format!("{scope}.{name}")
    }
}
