//! Every store passes the same conformance suite, so the cache behaves the
//! same whichever is underneath: the embedded store, one Redis server, and
//! Redis on a three-master cluster.

cachette_test::store_conformance!(embedded, async { cachette_test::Fixture::embedded() });
cachette_test::store_conformance!(redis, cachette_test::Fixture::redis());
cachette_test::store_conformance!(cluster, cachette_test::Fixture::cluster());
