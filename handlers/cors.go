package handlers

import (
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"
)

// corsMaxAge is how long (seconds) a browser may cache a preflight answer.
const corsMaxAge = "600"

// cors answers cross-origin requests to the ticket route, the SSE route
// and the client library (Config.CORSOrigins). A request without Origin,
// or from the public host itself, passes untouched. An allowed origin is
// echoed in Access-Control-Allow-Origin, with credentials allowed (the
// SSE resume cookie needs them) and so never "*"; a preflight is answered
// 204 here. A preflight from any other origin is 403. On the SSE and
// ticket routes an actual request from another origin is 403 too, before
// its credentials are looked at, so a page the browser would not let read
// the answer cannot spend a ticket or a stream slot either; the library
// is served to it without CORS headers (the browser then refuses it).
func (s *Server) cors(refuseOthers bool) gin.HandlerFunc {
	return func(c *gin.Context) {
		origin := c.GetHeader("Origin")
		if origin == "" {
			return
		}
		c.Writer.Header().Add("Vary", "Origin")
		preflight := c.Request.Method == http.MethodOptions && c.GetHeader("Access-Control-Request-Method") != ""
		u, ok := parseOrigin(origin)
		if ok && s.sameOrigin(c.Request, u) {
			return
		}
		if !ok || !matchOrigin(s.corsOrigins, u) {
			if preflight || refuseOthers {
				const why = "cross-origin request refused"
				switch route := c.FullPath(); {
				case preflight:
					s.log.Info(why, "path", redactPath(c.Request.URL.Path), "origin", redactSegment(origin), "preflight", true)
				case strings.HasSuffix(route, "/events"):
					s.refuse(c, transportSSE, refusedOrigin, why, "origin", redactSegment(origin))
				case strings.HasSuffix(route, "/sse-ticket"):
					s.refuseMint(c, refusedOrigin, why, "origin", redactSegment(origin))
				default:
					s.log.Info(why, "path", redactPath(c.Request.URL.Path), "origin", redactSegment(origin))
				}
				abortJSON(c, http.StatusForbidden, "origin not allowed")
			}
			return
		}
		h := c.Writer.Header()
		h.Set("Access-Control-Allow-Origin", origin)
		h.Set("Access-Control-Allow-Credentials", "true")
		if preflight {
			h.Set("Access-Control-Allow-Methods", "GET, POST")
			h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID, Cache-Control")
			h.Set("Access-Control-Max-Age", corsMaxAge)
			c.AbortWithStatus(http.StatusNoContent)
			return
		}
		h.Set("Access-Control-Expose-Headers", "Retry-After")
	}
}

// options answers an OPTIONS request that is not a CORS preflight (those
// cors answers itself).
func options(c *gin.Context) {
	c.Header("Allow", "GET, POST, OPTIONS")
	c.Status(http.StatusNoContent)
}
