// Package tools holds the programs that measure meshgate and gather its
// test data, apart from the library and its internal helpers: peerbench
// (meshgate beside the Go alternatives, nginx, HAProxy and goepoll),
// goepoll (the smallest SNI proxy Go allows, peerbench's yardstick),
// burstmem (the memory a burst of idle connections costs), l7bench (what
// terminating a peer's HTTP export costs against passing it through) and
// capturehellos (real clients' ClientHellos for sni/testdata). Each is a
// main package; see its own doc.
package tools
