// Package web holds the browser client library (topohub.js) and the demo
// console, embedded into the hub binary. It imports nothing of topohub.
package web

import "embed"

// Files are the static files served at the hub's root: /, /topohub.js,
// /app.js and /style.css.
//
//go:embed index.html app.js style.css topohub.js
var Files embed.FS
