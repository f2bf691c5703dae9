//! trustdev device models.
