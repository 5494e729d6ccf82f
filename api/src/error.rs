//! Field-level errors shared by strict decoding, validation and selector parsing.
//!
//! Owns the error shapes that name the offending field (`spec.replicas: must be >= 0`). Every
//! check in this crate reports through [`FieldErrors`] so callers can show all problems at once.
//! It holds no checking logic of its own.

use std::fmt;

/// One problem with one field. `path` uses Kubernetes field-path syntax: dotted names with `[i]`
/// for list elements and `[key]` for map entries (`spec.template.spec.containers[0].image`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }

    /// `path: required`.
    pub fn required(path: impl Into<String>) -> Self {
        FieldError::new(path, "required")
    }

    /// `path: Invalid value: <value>: <detail>`, the wording Kubernetes uses.
    pub fn invalid(
        path: impl Into<String>,
        value: impl fmt::Display,
        detail: impl fmt::Display,
    ) -> Self {
        FieldError::new(path, format!("Invalid value: {value}: {detail}"))
    }

    /// `path: Unsupported value: "x": supported values: "a", "b"`.
    pub fn not_supported(path: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        FieldError::new(
            path,
            format!(
                "Unsupported value: {value:?}: supported values: {}",
                list.join(", ")
            ),
        )
    }

    /// `path: Duplicate value: <value>`.
    pub fn duplicate(path: impl Into<String>, value: impl fmt::Display) -> Self {
        FieldError::new(path, format!("Duplicate value: {value}"))
    }

    /// `path: unknown field "path"`, the wording of `kubectl apply --validate=strict`.
    pub fn unknown_field(path: impl Into<String>) -> Self {
        let path = path.into();
        let message = format!("unknown field {path:?}");
        FieldError { path, message }
    }
}

/// A non-empty list of field errors, displayed joined by `"; "`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    pub fn new() -> Self {
        FieldErrors(Vec::new())
    }

    pub fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldErrors(vec![FieldError::new(path, message)])
    }

    pub fn push(&mut self, e: FieldError) {
        self.0.push(e);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, FieldError> {
        self.0.iter()
    }

    /// `Ok(())` when empty, else `Err(self)`.
    pub fn into_result(self) -> Result<(), FieldErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

impl From<FieldError> for FieldErrors {
    fn from(e: FieldError) -> Self {
        FieldErrors(vec![e])
    }
}

impl From<Vec<FieldError>> for FieldErrors {
    fn from(v: Vec<FieldError>) -> Self {
        FieldErrors(v)
    }
}

impl IntoIterator for FieldErrors {
    type Item = FieldError;
    type IntoIter = std::vec::IntoIter<FieldError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a FieldErrors {
    type Item = &'a FieldError;
    type IntoIter = std::slice::Iter<'a, FieldError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Extend<FieldError> for FieldErrors {
    fn extend<I: IntoIterator<Item = FieldError>>(&mut self, iter: I) {
        self.0.extend(iter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_single_and_joined() {
        let e = FieldError::new("spec.template.spec.containers[0].image", "required");
        assert_eq!(
            e.to_string(),
            "spec.template.spec.containers[0].image: required"
        );
        let errs = FieldErrors(vec![e, FieldError::new("spec.replicas", "must be >= 0")]);
        assert_eq!(
            errs.to_string(),
            "spec.template.spec.containers[0].image: required; spec.replicas: must be >= 0"
        );
        let as_dyn: &dyn std::error::Error = &errs;
        assert!(as_dyn.to_string().contains("; "));
    }

    #[test]
    fn unknown_field_wording() {
        let e = FieldError::unknown_field("spec.replicaz");
        assert_eq!(e.path, "spec.replicaz");
        assert_eq!(
            e.to_string(),
            "spec.replicaz: unknown field \"spec.replicaz\""
        );
    }

    #[test]
    fn into_result() {
        assert!(FieldErrors::new().into_result().is_ok());
        assert!(FieldErrors::single("a", "b").into_result().is_err());
    }
}
