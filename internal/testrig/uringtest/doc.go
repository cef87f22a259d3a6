// Package uringtest lets a test see what a process does where io_uring is
// refused: Forbid installs a seccomp filter, as container runtimes do,
// that fails io_uring_setup. Linux only; it is for tests, which run it in
// a process of their own (the filter cannot be removed).
package uringtest
