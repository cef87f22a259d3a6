// Package docs holds meshgate's task guides, the Markdown files beside this
// one; README.md links to each. It has no code of its own: its test runs
// every sh block of every guide, in order, from the repository's root, so
// that a command a guide gives is one that works.
package docs
