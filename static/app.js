// Copy buttons: the only script on the pages; everything else works without it.
document.addEventListener('click', function (e) {
  var id = e.target && e.target.getAttribute && e.target.getAttribute('data-copy');
  if (!id) return;
  var el = document.getElementById(id);
  if (!el || !navigator.clipboard) return;
  navigator.clipboard.writeText(el.textContent).then(function () {
    e.target.textContent = 'Copied';
    setTimeout(function () { e.target.textContent = 'Copy'; }, 1500);
  });
});
