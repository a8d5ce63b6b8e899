// Package web holds what the broker serves to browsers: the pushctl.js
// client (as a classic script and as an ES module, with TypeScript
// declarations) and the web console, which is built on it.
package web

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
)

//go:embed client.js pushctl.d.ts console.html console.js console.css
var files embed.FS

// asset is one served file, its gzip form made once.
type asset struct {
	body, gz []byte
	ctype    string
	etag     string
}

var assets = map[string]*asset{}

func init() {
	src := read("client.js")
	// The classic script keeps everything inside a function and defines
	// one global; the module exports the same names.
	classic := "(function (global) {\n\"use strict\";\n" + src +
		"\nglobal.pushctl = pushctl;\n})(typeof globalThis !== \"undefined\" ? globalThis : window);\n"
	module := src + "\nexport { connect, Client, Channel, PushctlError, matches };\nexport default pushctl;\n"
	add("/pushctl.js", classic, "text/javascript; charset=utf-8")
	add("/pushctl.mjs", module, "text/javascript; charset=utf-8")
	add("/pushctl.d.ts", read("pushctl.d.ts"), "application/typescript; charset=utf-8")
	add("/", read("console.html"), "text/html; charset=utf-8")
	add("/console.js", read("console.js"), "text/javascript; charset=utf-8")
	add("/console.css", read("console.css"), "text/css; charset=utf-8")
}

func read(name string) string {
	b, err := files.ReadFile(name)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func add(path, body, ctype string) {
	var gz bytes.Buffer
	w, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	w.Write([]byte(body))
	w.Close()
	sum := sha256.Sum256([]byte(body))
	assets[path] = &asset{body: []byte(body), gz: gz.Bytes(), ctype: ctype, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
}

// ClientPaths are the paths of the client files.
var ClientPaths = []string{"/pushctl.js", "/pushctl.mjs", "/pushctl.d.ts"}

// ConsolePaths are the paths of the web console.
var ConsolePaths = []string{"/", "/console.js", "/console.css"}

// Handler serves one of the files. The console page is strict about what
// it may load: only from the broker itself.
func Handler(path string) http.Handler {
	a := assets[path]
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", a.ctype)
		h.Set("ETag", a.etag)
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Add("Vary", "Accept-Encoding")
		if path == "/" {
			h.Set("Content-Security-Policy", "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'")
			h.Set("Referrer-Policy", "no-referrer")
		} else {
			h.Set("Access-Control-Allow-Origin", "*")
		}
		if r.Header.Get("If-None-Match") == a.etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		body := a.body
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			h.Set("Content-Encoding", "gzip")
			body = a.gz
		}
		h.Set("Content-Length", strconv.Itoa(len(body)))
		if r.Method != http.MethodHead {
			w.Write(body)
		}
	})
}
