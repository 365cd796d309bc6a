//! Both stores pass the same conformance suite, so the cache behaves the same
//! whichever is underneath.

cachette_test::store_conformance!(embedded, async { cachette_test::Fixture::embedded() });
cachette_test::store_conformance!(redis, cachette_test::Fixture::redis());
