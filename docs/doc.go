// Package docs holds meshgate's task guides, the Markdown files beside this
// one; README.md links to each. It has no code of its own. Its tests keep
// the guides true: every sh block of every guide runs, in order, from the
// repository's root, against real Consul agents where a guide starts them;
// every go block of the guides and the README is a program that compiles
// or a fragment of the function it names; every link between them leads
// to a file and heading that exist.
package docs
