use std::collections::HashSet;

/// The synthetic oneofs a proto3 target adds to one message.
pub(super) struct Synthetic {
    /// How many oneofs the message declares; synthetic ones come after them.
    pub(super) declared: usize,
    /// Every name in the message's scope, so a synthetic oneof cannot collide with one.
    pub(super) taken: HashSet<String>,
    pub(super) names: Vec<String>,
}

impl Synthetic {
    pub(super) fn none() -> Synthetic {
        Synthetic {
            declared: 0,
            taken: HashSet::new(),
            names: Vec::new(),
        }
    }

    /// protoc's naming for proto3 `optional`: `_` + the field name, then `X` prepended until the
    /// name is free. protoc only avoids field and oneof names (in proto3 a nested `_a` next to
    /// `optional a` is an error); an editions file may have such names, so all are avoided.
    pub(super) fn allocate(&mut self, field: &str) -> Result<i32, String> {
        let mut name = if field.starts_with('_') {
            field.to_owned()
        } else {
            format!("_{field}")
        };
        while self.taken.contains(&name) {
            name.insert(0, 'X');
        }
        let index = i32::try_from(self.declared + self.names.len())
            .map_err(|_| "too many oneofs".to_owned())?;
        self.taken.insert(name.clone());
        self.names.push(name);
        Ok(index)
    }
}
