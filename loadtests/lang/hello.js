// Load-test guest: a componentize-js (StarlingMonkey) component exporting
// `wasi:http/incoming-handler` through the fetch event; it answers every request with 200,
// `content-type: text/plain` and `hello from javascript\n`. Built by build.sh.

const BODY = "hello from javascript\n";

addEventListener("fetch", (event) => {
  event.respondWith(
    new Response(BODY, { status: 200, headers: { "content-type": "text/plain" } }),
  );
});
