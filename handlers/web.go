package handlers

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"topohub/web"
)

// serveWeb serves the browser client library and the demo console from
// the embedded files: / (the console), /topohub.js and its React hook
// /react.js with their types, /app.js, /style.css.
//
// The client library and its types are also served across origins to
// Config.CORSOrigins (cors), so a dashboard elsewhere can import it.
func serveWeb(e *gin.Engine, cors gin.HandlerFunc) {
	files := http.FileServerFS(web.Files)
	serve := func(c *gin.Context) {
		// The console is code: revalidate it so an upgraded hub is
		// picked up at once.
		c.Header("Cache-Control", "no-cache")
		files.ServeHTTP(c.Writer, c.Request)
	}
	for _, p := range []string{"/", "/index.html", "/app.js", "/style.css"} {
		e.GET(p, serve)
		e.HEAD(p, serve)
	}
	for _, p := range []string{"/topohub.js", "/topohub.d.ts", "/react.js", "/react.d.ts"} {
		e.GET(p, cors, serve)
		e.HEAD(p, cors, serve)
		e.OPTIONS(p, cors, options)
	}
}
