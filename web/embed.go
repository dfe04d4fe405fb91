// Package web holds the browser client library (topohub.js, with its
// React hook react.js) and the demo console, embedded into the hub
// binary. It imports nothing of topohub.
package web

import "embed"

// Files are the static files served at the hub's root: /, /topohub.js,
// /react.js, their .d.ts types, /app.js and /style.css.
//
//go:embed index.html app.js style.css topohub.js topohub.d.ts react.js react.d.ts
var Files embed.FS
